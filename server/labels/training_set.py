"""Which labels a training learns from and which it is measured on.

Training sees every label except those of audit patches; the audit set's verdicts measure
each version. Where a position has several labels, the dataset's ``label_aggregation`` decides
(:mod:`server.labels.consensus`): their consensus, or the latest. The training and the audit
consensus are each estimated from their own labels only, so the audit verdicts never depend on
what training learns from; the training consensus also hears the newest classifier's
out-of-fold view of its positions, the audit consensus never does."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.tables import AnnotationTask, Dataset, Label
from server.labels.consensus import Verdict, aggregate, label_aggregation, label_weights
from server.labels.model_view import model_view


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


def position_view(
    session: Session, groups: dict[Hashable, list[Label]], *, dataset_id: int
) -> dict[Hashable, float]:
    """Per position of ``groups``: the newest classifier's out-of-fold P(artifact), where it
    has one (it trained on one label of the position)."""
    viewed = model_view(session, dataset_id=dataset_id)
    if not viewed:
        return {}
    return {key: viewed[lab.id] for key, labs in groups.items() for lab in labs if lab.id in viewed}


def training_verdicts(
    session: Session, groups: dict[Hashable, list[Label]], *, dataset: Dataset
) -> dict[Hashable, Verdict]:
    """The verdict of each training position (see :mod:`server.labels.consensus`)."""
    mode = label_aggregation(dataset)
    if mode != "consensus":
        return aggregate(groups, mode=mode, weights={})
    view = position_view(session, groups, dataset_id=dataset.id)
    return aggregate(groups, mode=mode, weights=label_weights(session), model=view)


def training_set(session: Session, *, dataset: Dataset) -> LabelSet:
    """One label per training position and its weight (see :mod:`server.labels.consensus`)."""
    groups = training_groups(session, dataset=dataset)
    # in the order the positions were first labelled
    verdicts = list(training_verdicts(session, groups, dataset=dataset).values())
    return LabelSet(
        [v.label for v in verdicts], [v.weight for v in verdicts], label_aggregation(dataset)
    )


def training_labels(session: Session, *, dataset: Dataset) -> list[Label]:
    """The label that speaks for each training position."""
    return training_set(session, dataset=dataset).labels


def audit_labels(session: Session, *, dataset: Dataset) -> list[Label]:
    """The verdict of every labelled audit patch: the label that holds it."""
    mode = label_aggregation(dataset)
    weights = label_weights(session) if mode == "consensus" else {}
    verdicts = aggregate(audit_groups(session, dataset=dataset), mode=mode, weights=weights)
    return [v.label for v in verdicts.values()]
