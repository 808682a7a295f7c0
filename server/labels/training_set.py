"""Which labels a training learns from and which it is measured on.

Training sees every label except those of audit patches; the audit set's latest verdicts
measure each version. Where annotators disagree on a position, the latest verdict counts."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.tables import AnnotationTask, Dataset, Label


def training_labels(session: Session, *, dataset: Dataset) -> list[Label]:
    """Labels for training: everything except labels of audit patches. Where annotators
    disagree on a position, the latest verdict counts."""
    audit = select(AnnotationTask.id).where(
        AnnotationTask.dataset_id == dataset.id, AnnotationTask.kind == "audit"
    )
    audit_positions = set(
        session.execute(
            select(AnnotationTask.x, AnnotationTask.y, AnnotationTask.z).where(
                AnnotationTask.dataset_id == dataset.id, AnnotationTask.kind == "audit"
            )
        ).all()
    )
    rows = session.scalars(
        select(Label)
        .where(
            Label.dataset_id == dataset.id,
            (Label.task_id.is_(None)) | (Label.task_id.not_in(audit)),
        )
        .order_by(Label.id)
    )
    latest: dict[tuple[int, int, int, int, int], Label] = {}
    for label in rows:
        if (label.x, label.y, label.z) in audit_positions:
            continue
        latest[(label.x, label.y, label.z, label.w, label.h)] = label
    return list(latest.values())


def audit_labels(session: Session, *, dataset: Dataset) -> list[Label]:
    """The latest label of every labelled audit patch."""
    positions = {
        (x, y, z)
        for x, y, z in session.execute(
            select(AnnotationTask.x, AnnotationTask.y, AnnotationTask.z).where(
                AnnotationTask.dataset_id == dataset.id, AnnotationTask.kind == "audit"
            )
        ).all()
    }
    latest: dict[tuple[int, int, int], Label] = {}
    for label in session.scalars(
        select(Label).where(Label.dataset_id == dataset.id).order_by(Label.id)
    ):
        key = (label.x, label.y, label.z)
        if key in positions:
            latest[key] = label
    return list(latest.values())
