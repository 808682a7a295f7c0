"""Annotation tasks: leasing proposed patches to annotators, one annotator per task at a time.

PostgreSQL hands out tasks with ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent
``next`` calls never wait on each other and never get the same row. SQLite has one writer:
the lease runs in a ``BEGIN IMMEDIATE`` transaction (see :func:`write_transaction`).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from server.db.base import utcnow
from server.db.tables import AnnotationTask, Annotator, Dataset, Label, TaskSkip
from server.errors import Conflict, NotFound
from server.labels.service import NewLabel, create_label

# An annotator may hold this many leases (the page prefetches the next patch); beyond it the
# oldest goes back to the queue, so a reloaded page never strands tasks until they expire.
MAX_LEASES_PER_ANNOTATOR = 3


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
        stmt = stmt.with_for_update(skip_locked=True)
    task = session.scalar(stmt)
    if task is None:
        return None
    task.status = "leased"
    task.lease_holder_id = annotator.id
    task.lease_expires_at = now + timedelta(seconds=lease_seconds)
    session.flush()
    return task


def open_task_count(session: Session, *, dataset_id: int, cap: int = 1000) -> int:
    """How many tasks wait, counted up to ``cap`` (an exact count would scan the queue)."""
    waiting = (
        select(AnnotationTask.id)
        .where(AnnotationTask.dataset_id == dataset_id, AnnotationTask.status == "open")
        .limit(cap)
    )
    return int(session.scalar(select(func.count()).select_from(waiting.subquery())) or 0)


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

        existing = find_by_key(session, annotator=annotator.name, key=idempotency_key)
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
        new=NewLabel(
            x=task.x,
            y=task.y,
            z=task.z,
            w=task.w,
            h=task.h,
            label=label,
            artifact_type=artifact_type,
        ),
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


def task_counts(session: Session, *, dataset_id: int) -> dict[str, int]:
    now = utcnow()
    counts = {
        status: int(n)
        for status, n in session.execute(
            select(AnnotationTask.status, func.count(AnnotationTask.id))
            .where(AnnotationTask.dataset_id == dataset_id)
            .group_by(AnnotationTask.status)
        ).all()
    }
    # leases that ran out count as available: the next `next` call reclaims them
    expired = session.scalar(
        select(func.count(AnnotationTask.id)).where(
            AnnotationTask.dataset_id == dataset_id,
            AnnotationTask.status == "leased",
            AnnotationTask.lease_expires_at < now,
        )
    )
    counts["available"] = counts.get("open", 0) + int(expired or 0)
    return counts


def labelling_progress(
    session: Session, *, dataset_id: int, annotator: Annotator, retrain_every: int
) -> dict[str, object]:
    """What the labeling page shows beside the patch: the caller's rate, how many labels
    until the next training starts, and the training waiting or running."""
    from server.db.tables import Job, ModelVersion
    from server.jobs.kinds import ACTIVE_STATES

    now = utcnow()
    last = session.scalar(
        select(func.max(ModelVersion.label_snapshot_id)).where(
            ModelVersion.dataset_id == dataset_id,
            ModelVersion.kind == "classifier",
            ModelVersion.status.in_(("ready", "training")),
        )
    )
    total, since = session.execute(
        select(func.count(Label.id), func.count(Label.id).filter(Label.id > (last or 0))).where(
            Label.dataset_id == dataset_id
        )
    ).one()
    mine = session.scalar(
        select(func.count(Label.id)).where(
            Label.dataset_id == dataset_id,
            Label.annotator_id == annotator.id,
            Label.created_at >= now - timedelta(hours=1),
        )
    )
    job = session.scalar(
        select(Job)
        .where(Job.dataset_id == dataset_id, Job.kind == "train", Job.state.in_(ACTIVE_STATES))
        .order_by(Job.id.desc())
    )
    return {
        "remaining": open_task_count(session, dataset_id=dataset_id),
        "labels_total": int(total or 0),
        "my_labels_last_hour": int(mine or 0),
        "labels_since_training": int(since or 0),
        "retrain_every": retrain_every,
        "labels_until_training": max(0, retrain_every - int(since or 0)),
        "training": None
        if job is None
        else {"id": job.id, "state": job.state, "progress": job.progress, "message": job.message},
    }
