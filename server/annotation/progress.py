"""How far labelling is: tasks by status, and what the labeling page shows beside a patch."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.annotation.leasing import open_task_count
from server.db.base import utcnow
from server.db.tables import AnnotationTask, Annotator, Job, Label
from server.db.vocabulary import TaskStatus
from server.jobs.kinds import ACTIVE_STATES
from server.labels.service import last_training_snapshot


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
            AnnotationTask.status == TaskStatus.LEASED,
            AnnotationTask.lease_expires_at < now,
        )
    )
    counts["available"] = counts.get(TaskStatus.OPEN, 0) + int(expired or 0)
    return counts


def labelling_progress(
    session: Session, *, dataset_id: int, annotator: Annotator, retrain_every: int
) -> dict[str, object]:
    """What the labeling page shows beside the patch: the caller's rate, how many labels
    until the next training starts, and the training waiting or running."""
    now = utcnow()
    last = last_training_snapshot(session, dataset_id=dataset_id)
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
    busy = session.scalar(
        select(Job)
        .where(
            Job.dataset_id == dataset_id,
            Job.kind.in_(tuple(BUSY)),
            Job.state.in_(ACTIVE_STATES),
            Job.parent_id.is_(None),
        )
        .order_by(Job.id)
    )
    until = max(0, retrain_every - int(since or 0))
    return {
        "remaining": open_task_count(session, dataset_id=dataset_id),
        "labels_total": int(total or 0),
        "my_labels_last_hour": int(mine or 0),
        "labels_since_training": int(since or 0),
        "retrain_every": retrain_every,
        "labels_until_training": until,
        "training": None
        if job is None
        else {"id": job.id, "state": job.state, "progress": job.progress, "message": job.message},
        "next_step": next_step(training=job, busy=busy, until=until),
    }


# what else keeps the loop busy, in words for the labeling page
BUSY = {
    "pretrain": "pretraining the autoencoder",
    "score": "scoring the pool",
    "propose": "choosing the next patches",
    "audit": "measuring the versions on the audit set",
}


def next_step(*, training: Job | None, busy: Job | None, until: int) -> str:
    """One line on what comes next: never "after 0 more labels" for a training that waits
    for something else."""
    if training is not None:
        return f"training {training.state} {round(training.progress * 100)} %"
    labels = (
        f"next training after {until} more label{'s' if until != 1 else ''}"
        if until
        else "a training is due"
    )
    if busy is not None:
        doing = f"{BUSY[busy.kind]} {round(busy.progress * 100)} %"
        return f"{doing} · {labels}" + (": it starts when this is done" if not until else "")
    return labels if until else "a training starts with the next label"
