"""Which labels a training learns from and which it is measured on.

Training sees every label except those of audit patches; the audit set's verdicts measure
each version. Where a position has several labels, the dataset's ``label_aggregation`` decides
(:mod:`server.labels.consensus`): their consensus, or the latest. The training and the audit
consensus are each estimated from their own labels only, so the audit verdicts never depend on
what training learns from."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.tables import AnnotationTask, Dataset, Label
from server.labels.consensus import aggregate, label_aggregation, label_weights


@dataclass(frozen=True)
class LabelSet:
    """One label per position, the one that speaks for it, with how much it counts."""

    labels: list[Label]
    weights: list[float]
    aggregation: str


def _audit_positions(session: Session, dataset: Dataset) -> set[tuple[int, int, int]]:
    return {
        (x, y, z)
        for x, y, z in session.execute(
            select(AnnotationTask.x, AnnotationTask.y, AnnotationTask.z).where(
                AnnotationTask.dataset_id == dataset.id, AnnotationTask.kind == "audit"
            )
        ).all()
    }


def training_groups(session: Session, *, dataset: Dataset) -> dict[Hashable, list[Label]]:
    """Labels for training by position (x, y, z, w, h), oldest first: everything except
    labels of audit patches."""
    audit = select(AnnotationTask.id).where(
        AnnotationTask.dataset_id == dataset.id, AnnotationTask.kind == "audit"
    )
    audit_positions = _audit_positions(session, dataset)
    rows = session.scalars(
        select(Label)
        .where(
            Label.dataset_id == dataset.id,
            (Label.task_id.is_(None)) | (Label.task_id.not_in(audit)),
        )
        .order_by(Label.id)
    )
    groups: dict[Hashable, list[Label]] = {}
    for label in rows:
        if (label.x, label.y, label.z) in audit_positions:
            continue
        groups.setdefault((label.x, label.y, label.z, label.w, label.h), []).append(label)
    return groups


def audit_groups(session: Session, *, dataset: Dataset) -> dict[Hashable, list[Label]]:
    """Labels of audit patches by position (x, y, z), oldest first."""
    positions = _audit_positions(session, dataset)
    groups: dict[Hashable, list[Label]] = {}
    for label in session.scalars(
        select(Label).where(Label.dataset_id == dataset.id).order_by(Label.id)
    ):
        key = (label.x, label.y, label.z)
        if key in positions:
            groups.setdefault(key, []).append(label)
    return groups


def training_set(session: Session, *, dataset: Dataset) -> LabelSet:
    """One label per training position and its weight (see :mod:`server.labels.consensus`)."""
    mode = label_aggregation(dataset)
    weights = label_weights(session) if mode == "consensus" else {}
    # in the order the positions were first labelled
    verdicts = list(
        aggregate(training_groups(session, dataset=dataset), mode=mode, weights=weights).values()
    )
    return LabelSet([v.label for v in verdicts], [v.weight for v in verdicts], mode)


def training_labels(session: Session, *, dataset: Dataset) -> list[Label]:
    """The label that speaks for each training position."""
    return training_set(session, dataset=dataset).labels


def audit_labels(session: Session, *, dataset: Dataset) -> list[Label]:
    """The verdict of every labelled audit patch: the label that holds it."""
    mode = label_aggregation(dataset)
    weights = label_weights(session) if mode == "consensus" else {}
    verdicts = aggregate(audit_groups(session, dataset=dataset), mode=mode, weights=weights)
    return [v.label for v in verdicts.values()]
