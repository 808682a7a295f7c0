"""Leasing annotation tasks: one annotator per task at a time, never a task the annotator
skipped, nor a patch they labelled already (a task that wants a second annotator, a patch
offered again for a new label).

PostgreSQL hands out tasks with ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent
``next`` calls never wait on each other and never get the same row. SQLite has one writer:
the lease runs in a ``BEGIN IMMEDIATE`` transaction (see :func:`write_transaction`).
"""

from __future__ import annotations

import functools
import time
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    Executable,
    Select,
    Table,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, aliased

from server.annotation import task_state
from server.annotation.overlap import labelled_by
from server.db.base import utcnow
from server.db.tables import AnnotationTask, Annotator, Dataset, TaskSkip
from server.db.vocabulary import TaskStatus

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
            AnnotationTask.status == TaskStatus.LEASED,
            AnnotationTask.lease_expires_at < utcnow(),
        )
        .values(task_state.reopened())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def lease_next(
    session: Session, *, dataset_id: int, annotator: Annotator, lease_seconds: int
) -> tuple[AnnotationTask, Dataset] | None:
    """Lease the best-ranked open task of the dataset to ``annotator``: the task and its
    dataset; ``None`` when there is none. Call inside a write transaction.

    On PostgreSQL one statement gives the annotator's surplus leases back, leases the task
    and reads its dataset. Expired leases are reclaimed every :data:`RECLAIM_EVERY_S` per dataset and
    process, and always before answering that no task is left."""
    now = utcnow()
    expires = now + timedelta(seconds=lease_seconds)
    reclaimed = _reclaim_due(session, dataset_id=dataset_id)
    if reclaimed:
        reclaim_expired(session, dataset_id=dataset_id)
    # (dataset_id, status, rank, id) is an index: this reads one row, not the queue.
    passed = select(TaskSkip.task_id).where(
        TaskSkip.annotator_id == annotator.id, TaskSkip.task_id == AnnotationTask.id
    )
    stmt = (
        select(AnnotationTask)
        .where(
            AnnotationTask.dataset_id == dataset_id,
            AnnotationTask.status == TaskStatus.OPEN,
            ~passed.exists(),  # a task someone skipped goes to the others, not back to them
            ~labelled_by(annotator.id),  # nor a patch to someone who labelled it already
        )
        .order_by(AnnotationTask.rank, AnnotationTask.id)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        leased = _lease_in_one_statement(
            session, dataset_id=dataset_id, annotator=annotator, now=now, expires=expires
        )
        if leased is not None:
            return leased
        if not reclaimed:
            reclaim_expired(session, dataset_id=dataset_id)
        task = _lease_candidate_postgres(session, stmt, dataset_id=dataset_id)
    else:
        _release_surplus(session, dataset_id=dataset_id, annotator=annotator, now=now)
        task = session.scalar(stmt)  # BEGIN IMMEDIATE: this transaction is the only writer
        if task is None and not reclaimed and reclaim_expired(session, dataset_id=dataset_id):
            task = session.scalar(stmt)
    if task is None:
        return None
    task_state.set_state(task, task_state.leased(holder_id=annotator.id, expires=expires))
    session.flush()
    dataset = session.get(Dataset, dataset_id)
    assert dataset is not None  # the task's foreign key
    return task, dataset


def _lease_in_one_statement(
    session: Session, *, dataset_id: int, annotator: Annotator, now: datetime, expires: datetime
) -> tuple[AnnotationTask, Dataset] | None:
    """Surplus release, pick, lease and dataset read in one statement (see
    :func:`_one_statement_lease`)."""
    params = {
        "lease_dataset": dataset_id,
        "lease_annotator": annotator.id,
        "lease_now": now,
        "lease_expires": expires,
    }
    row = session.execute(_one_statement_lease(), params).first()
    task: AnnotationTask | None = row[0] if row is not None else None
    # tasks of this annotator already in the session may just have been given back
    for held_task in list(session.identity_map.values()):
        if (
            isinstance(held_task, AnnotationTask)
            and held_task is not task
            and held_task.lease_holder_id == annotator.id
        ):
            session.expire(held_task)
    return (row[0], row[1]) if row is not None else None


@functools.cache
def _one_statement_lease() -> Executable:
    """``WITH surplus AS (UPDATE ...), leased AS (UPDATE ... WHERE id = (SELECT ... FOR UPDATE
    SKIP LOCKED) RETURNING ...) SELECT leased.*, datasets.* FROM leased JOIN datasets``.

    The surplus leases are those beyond the newest ``MAX_LEASES_PER_ANNOTATOR - 1`` the
    annotator held before this lease (a statement's parts see the same snapshot). Built
    once: making the CTEs' column collections costs more than running the statement. (No
    parameter is named like a column: an UPDATE would take it as a value to set.)"""
    table = cast(Table, AnnotationTask.__table__)
    dataset_id: BindParameter[int] = bindparam("lease_dataset")
    annotator_id: BindParameter[int] = bindparam("lease_annotator")
    now: BindParameter[datetime] = bindparam("lease_now")
    expires: BindParameter[datetime] = bindparam("lease_expires")
    held = (
        select(table.c.id)
        .where(
            table.c.dataset_id == dataset_id,
            table.c.status == TaskStatus.LEASED,
            table.c.lease_holder_id == annotator_id,
            table.c.lease_expires_at >= now,
        )
        .order_by(table.c.lease_expires_at.desc())
        .offset(MAX_LEASES_PER_ANNOTATOR - 1)
        .correlate(None)  # a subquery of its own, not of the UPDATE of the same table
    )
    surplus = (
        update(table)
        .where(table.c.id.in_(held), table.c.lease_holder_id == annotator_id)
        .values(task_state.reopened())
        .values(updated_at=now)
        .returning(table.c.id)
        .cte("surplus")
    )
    passed = select(TaskSkip.task_id).where(
        TaskSkip.annotator_id == annotator_id, TaskSkip.task_id == table.c.id
    )
    pick = (
        select(table.c.id)
        .where(table.c.dataset_id == dataset_id, table.c.status == TaskStatus.OPEN)
        .where(~passed.exists(), ~labelled_by(annotator_id, table))
        .order_by(table.c.rank, table.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .correlate(None)
    )
    leased = (
        update(table)
        .where(table.c.id == pick.scalar_subquery())
        .values(task_state.leased(holder_id=annotator_id, expires=expires))
        .values(updated_at=now)
        .returning(*table.c)
        .cte("leased")
    )
    return (
        select(aliased(AnnotationTask, leased), Dataset)
        .join(Dataset, Dataset.id == leased.c.dataset_id)
        .add_cte(surplus)
        .execution_options(populate_existing=True)
    )


def _reclaim_due(session: Session, *, dataset_id: int) -> bool:
    """Whether this process last reclaimed the dataset's expired leases long enough ago
    (leases last many minutes: a few seconds more in the queue's back room cost nothing)."""
    key = (str(session.get_bind().engine.url), dataset_id)
    now = time.monotonic()
    if _next_reclaim.get(key, 0.0) > now:
        return False
    if len(_next_reclaim) > 1000:
        _next_reclaim.clear()
    _next_reclaim[key] = now + RECLAIM_EVERY_S
    return True


RECLAIM_EVERY_S = 5.0
_next_reclaim: dict[tuple[str, int], float] = {}


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
            .where(
                AnnotationTask.dataset_id == dataset_id, AnnotationTask.status == TaskStatus.OPEN
            )
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
        .where(AnnotationTask.dataset_id == dataset_id, AnnotationTask.status == TaskStatus.OPEN)
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
                AnnotationTask.status == TaskStatus.LEASED,
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
            .values(task_state.reopened())
        )
