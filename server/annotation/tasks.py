"""Annotation tasks: leasing proposed patches to annotators, one annotator per task at a time.

PostgreSQL hands out tasks with ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent
``next`` calls never wait on each other and never get the same row. SQLite has one writer:
the lease runs in a ``BEGIN IMMEDIATE`` transaction (see :func:`write_transaction`).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, func, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from server.db.base import utcnow
from server.db.tables import AnnotationTask, Annotator, Dataset, Label, TaskSkip
from server.errors import Conflict, NotFound
from server.labels.service import NewLabel, create_label

# An annotator may hold this many leases (the page prefetches the next patch); beyond it the
# oldest goes back to the queue, so a reloaded page never strands tasks until they expire.
MAX_LEASES_PER_ANNOTATOR = 3
# How long `next` waits for a batch replacement to commit when it locked every open task.
REPLACEMENT_WAIT_S = 10.0


def reclaim_expired(session: Session, *, dataset_id: int) -> int:
    """Put tasks whose lease ran out back into the queue."""
    result = session.execute(
        update(AnnotationTask)
        .where(
            AnnotationTask.dataset_id == dataset_id,
            AnnotationTask.status == "leased",
            AnnotationTask.lease_expires_at < utcnow(),
        )
        .values(status="open", lease_holder_id=None, lease_expires_at=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def lease_next(
    session: Session, *, dataset_id: int, annotator: Annotator, lease_seconds: int
) -> AnnotationTask | None:
    """Lease the best-ranked open task of the dataset to ``annotator``; ``None`` when there
    is none. Call inside a write transaction."""
    now = utcnow()
    reclaim_expired(session, dataset_id=dataset_id)
    _release_surplus(session, dataset_id=dataset_id, annotator=annotator, now=now)
    # (dataset_id, status, rank, id) is an index: this reads one row, not the queue.
    passed = select(TaskSkip.task_id).where(
        TaskSkip.annotator_id == annotator.id, TaskSkip.task_id == AnnotationTask.id
    )
    stmt = (
        select(AnnotationTask)
        .where(
            AnnotationTask.dataset_id == dataset_id,
            AnnotationTask.status == "open",
            ~passed.exists(),  # a task someone skipped goes to the others, not back to them
        )
        .order_by(AnnotationTask.rank, AnnotationTask.id)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        task = _lease_candidate_postgres(session, stmt, dataset_id=dataset_id)
    else:
        task = session.scalar(stmt)  # BEGIN IMMEDIATE: this transaction is the only writer
    if task is None:
        return None
    task.status = "leased"
    task.lease_holder_id = annotator.id
    task.lease_expires_at = now + timedelta(seconds=lease_seconds)
    session.flush()
    return task


def _lease_candidate_postgres(
    session: Session, stmt: Select[Any], *, dataset_id: int
) -> AnnotationTask | None:
    """The first open task no one else is taking (``SKIP LOCKED``).

    When every open task is locked, a batch replacement is retiring them and has not
    committed yet: wait for it (at most :data:`REPLACEMENT_WAIT_S` in all, replacements back
    to back included), then take the first task of the batch it committed, rather than
    answer "no tasks" with a queue full of them.
    """
    deadline = time.monotonic() + REPLACEMENT_WAIT_S
    while True:
        task = session.scalar(stmt.with_for_update(skip_locked=True))
        if task is not None:
            return task
        visible = session.scalar(
            select(AnnotationTask.id)
            .where(AnnotationTask.dataset_id == dataset_id, AnnotationTask.status == "open")
            .limit(1)
        )
        left_ms = int((deadline - time.monotonic()) * 1000)
        if visible is None or left_ms <= 0:
            return None  # the queue is empty, not locked; or the replacement holds on
        session.execute(text(f"SET LOCAL lock_timeout = {left_ms}"))
        try:
            with session.begin_nested():
                task = session.scalar(stmt.with_for_update())
        except OperationalError:  # lock_timeout
            task = None
        session.execute(text("SET LOCAL lock_timeout = 0"))
        if task is not None:
            return task
        # the rows waited for were retired; the new batch is visible to a new statement


def open_task_count(session: Session, *, dataset_id: int, cap: int = 1000) -> int:
    """How many tasks wait, counted up to ``cap`` (an exact count would scan the queue).

    A full count (``cap`` reached) is remembered for :data:`FULL_COUNT_SECONDS`: with a long
    queue the answer hardly changes, and counting it was the dearest query of ``next``."""
    key = (str(session.get_bind().engine.url), dataset_id, cap)
    remembered = _full_counts.get(key)
    if remembered is not None and remembered > time.monotonic():
        return cap
    waiting = (
        select(AnnotationTask.id)
        .where(AnnotationTask.dataset_id == dataset_id, AnnotationTask.status == "open")
        .limit(cap)
    )
    count = int(session.scalar(select(func.count()).select_from(waiting.subquery())) or 0)
    if count >= cap:
        if len(_full_counts) > 1000:
            _full_counts.clear()
        _full_counts[key] = time.monotonic() + FULL_COUNT_SECONDS
    else:
        _full_counts.pop(key, None)
    return count


FULL_COUNT_SECONDS = 2.0
_full_counts: dict[tuple[str, int, int], float] = {}


def _release_surplus(
    session: Session, *, dataset_id: int, annotator: Annotator, now: object
) -> None:
    held = list(
        session.scalars(
            select(AnnotationTask.id)
            .where(
                AnnotationTask.dataset_id == dataset_id,
                AnnotationTask.status == "leased",
                AnnotationTask.lease_holder_id == annotator.id,
                AnnotationTask.lease_expires_at >= now,
            )
            .order_by(AnnotationTask.lease_expires_at.desc())
        )
    )
    surplus = held[MAX_LEASES_PER_ANNOTATOR - 1 :]
    if surplus:
        session.execute(
            update(AnnotationTask)
            .where(AnnotationTask.id.in_(surplus), AnnotationTask.lease_holder_id == annotator.id)
            .values(status="open", lease_holder_id=None, lease_expires_at=None)
        )


def get_task(session: Session, task_id: int, *, lock: bool = False) -> AnnotationTask:
    stmt = select(AnnotationTask).where(AnnotationTask.id == task_id)
    if lock and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    task = session.scalar(stmt)
    if task is None:
        raise NotFound(f"no task {task_id}")
    return task


def _leased_by_other(task: AnnotationTask, annotator: Annotator) -> bool:
    from server.db.base import as_utc

    return (
        task.status == "leased"
        and task.lease_holder_id is not None
        and task.lease_holder_id != annotator.id
        and task.lease_expires_at is not None
        and as_utc(task.lease_expires_at) >= utcnow()
    )


def label_task(
    session: Session,
    *,
    task_id: int,
    annotator: Annotator,
    label: str,
    artifact_type: str | None,
    source: str,
    idempotency_key: str | None,
) -> tuple[Label, bool]:
    """Record ``annotator``'s verdict on a task. A repeat with the same idempotency key
    returns the first label; a task leased by someone else is refused."""
    task = get_task(session, task_id, lock=True)
    if idempotency_key:
        from server.labels.service import find_by_key

        existing = find_by_key(
            session,
            annotator=annotator.name,
            key=idempotency_key,
            expect=_task_label(task, label=label, artifact_type=artifact_type),
            dataset_id=task.dataset_id,
            task_id=task.id,
        )
        if existing is not None:
            return existing, False
    if _leased_by_other(task, annotator):
        raise Conflict(f"task {task_id} is leased by another annotator")
    if task.status == "retired" and task.lease_holder_id != annotator.id:
        raise Conflict(f"task {task_id} was retired: ask for the next task")
    dataset = session.get(Dataset, task.dataset_id)
    assert dataset is not None
    created_label, created = create_label(
        session,
        dataset=dataset,
        new=_task_label(task, label=label, artifact_type=artifact_type),
        annotator=annotator,
        source=source,
        source_ref=f"task:{task.id}",
        task_id=task.id,
        idempotency_key=idempotency_key,
        key_checked=True,
    )
    task.status = "labelled"
    task.lease_holder_id = annotator.id
    task.lease_expires_at = None
    session.flush()
    return created_label, created


def _task_label(task: AnnotationTask, *, label: str, artifact_type: str | None) -> NewLabel:
    return NewLabel(
        x=task.x, y=task.y, z=task.z, w=task.w, h=task.h, label=label, artifact_type=artifact_type
    )


def skip_task(
    session: Session, *, task_id: int, annotator: Annotator, unsure: bool = False
) -> AnnotationTask:
    """Pass on a task: it goes back to the queue for the other annotators, never again to
    this one. ``unsure`` also puts the patch on the review list."""
    task = get_task(session, task_id, lock=True)
    if _leased_by_other(task, annotator):
        raise Conflict(f"task {task_id} is leased by another annotator")
    if task.status == "labelled":
        raise Conflict(f"task {task_id} is already labelled")
    if task.status == "retired":
        raise Conflict(f"task {task_id} was retired: ask for the next task")
    skip = session.scalar(
        select(TaskSkip).where(TaskSkip.task_id == task.id, TaskSkip.annotator_id == annotator.id)
    )
    if skip is None:
        session.add(TaskSkip(task_id=task.id, annotator_id=annotator.id, unsure=unsure))
    else:
        skip.unsure = skip.unsure or unsure
    task.status = "open"
    task.lease_holder_id = None
    task.lease_expires_at = None
    session.flush()
    return task


def undo_skip(
    session: Session, *, task_id: int, annotator: Annotator, lease_seconds: int
) -> AnnotationTask:
    """Take a skip back: the task is leased to the annotator again, if nobody took it."""
    task = get_task(session, task_id, lock=True)
    skip = session.scalar(
        select(TaskSkip).where(TaskSkip.task_id == task.id, TaskSkip.annotator_id == annotator.id)
    )
    if skip is None:
        raise Conflict(f"you did not skip task {task_id}")
    if task.status != "open":
        raise Conflict(f"task {task_id} is {task.status} now: someone else took it")
    session.delete(skip)
    task.status = "leased"
    task.lease_holder_id = annotator.id
    task.lease_expires_at = utcnow() + timedelta(seconds=lease_seconds)
    session.flush()
    return task


def review_list(
    session: Session, *, dataset_id: int, limit: int, offset: int
) -> tuple[list[tuple[AnnotationTask, int]], int]:
    """Tasks flagged "unsure" by at least one annotator, with how many flagged them."""
    flagged = (
        select(TaskSkip.task_id, func.count(TaskSkip.id).label("flags"))
        .where(TaskSkip.unsure.is_(True))
        .group_by(TaskSkip.task_id)
        .subquery()
    )
    stmt = (
        select(AnnotationTask, flagged.c.flags)
        .join(flagged, flagged.c.task_id == AnnotationTask.id)
        .where(AnnotationTask.dataset_id == dataset_id)
    )
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = session.execute(
        stmt.order_by(AnnotationTask.rank, AnnotationTask.id).limit(limit).offset(offset)
    ).all()
    return [(task, int(flags)) for task, flags in rows], int(total)


def change_verdict(
    session: Session,
    *,
    label_id: int,
    annotator: Annotator,
    label: str,
    artifact_type: str | None,
) -> Label:
    """Replace one of the annotator's labels by a new verdict on the same patch. The new
    label gets a new id, so the next training snapshot counts it."""
    old = session.get(Label, label_id)
    if old is None:
        raise NotFound(f"no label {label_id}")
    if old.annotator_id != annotator.id:
        raise Conflict(f"label {label_id} is not yours to change")
    dataset = session.get(Dataset, old.dataset_id)
    assert dataset is not None
    task_id, source_ref, source = old.task_id, old.source_ref, old.source
    position = NewLabel(
        x=old.x, y=old.y, z=old.z, w=old.w, h=old.h, label=label, artifact_type=artifact_type
    )
    # the new one first: its id is then above every existing one on SQLite too (which
    # reuses the highest id once it is deleted), so a training snapshot counts the change
    created, _ = create_label(
        session,
        dataset=dataset,
        new=position,
        annotator=annotator,
        source=source if source in ("ui", "api") else "ui",
        source_ref=source_ref,
        task_id=task_id,
    )
    session.delete(old)
    session.flush()
    return created


def release_task(session: Session, *, task_id: int, annotator: Annotator) -> AnnotationTask:
    """Give a leased task back to the queue."""
    task = get_task(session, task_id, lock=True)
    if task.status != "leased" or task.lease_holder_id != annotator.id:
        raise Conflict(f"task {task_id} is not leased by you")
    task.status = "open"
    task.lease_holder_id = None
    task.lease_expires_at = None
    session.flush()
    return task
