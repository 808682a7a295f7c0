"""Positions with several labels as training and the audit see them: the consensus, how much
it counts, and each annotator's verdict with whether it was counted (for the dashboard and for
checking what a label weight did)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from server.db.tables import Dataset, Label
from server.labels.consensus import Verdict, aggregate, label_aggregation, label_weights
from server.labels.training_set import audit_groups, training_groups, training_verdicts


@dataclass(frozen=True)
class LabelVerdict:
    label: Label
    annotator_weight: float
    counted: bool  # in the consensus (not excluded, not superseded by their later label)


@dataclass(frozen=True)
class PositionConsensus:
    x: int
    y: int
    z: int
    w: int
    h: int
    audit: bool
    aggregation: str
    verdict: str | None  # None: no verdict (only excluded annotators, or a tie)
    p_artifact: float | None
    training_weight: float | None  # how much the position counts in training (not audit)
    labels: list[LabelVerdict]


def positions_with_several_labels(
    session: Session, *, dataset: Dataset, limit: int, offset: int
) -> tuple[list[PositionConsensus], int]:
    """A page of the positions with two or more labels, ordered by z, y, x; and how many."""
    mode = label_aggregation(dataset)
    weights = label_weights(session)
    found: list[PositionConsensus] = []
    for audit, groups in (
        (False, training_groups(session, dataset=dataset)),
        (True, audit_groups(session, dataset=dataset)),
    ):
        verdicts = (
            aggregate(groups, mode=mode, weights=weights if mode == "consensus" else {})
            if audit
            else training_verdicts(session, groups, dataset=dataset)
        )
        for key, labs in groups.items():
            if len(labs) >= 2:
                found.append(_position(key, labs, verdicts, mode, weights, audit=audit))
    found.sort(key=lambda p: (p.z, p.y, p.x, p.w, p.h))
    return found[offset : offset + limit], len(found)


def _position(
    key: Hashable,
    labs: list[Label],
    verdicts: dict[Hashable, Verdict],
    mode: str,
    weights: dict[str, float],
    *,
    audit: bool,
) -> PositionConsensus:
    verdict = verdicts.get(key)
    latest_of = {lab.annotator: lab.id for lab in labs}
    first = labs[0]

    def counted(lab: Label) -> bool:
        if mode == "latest":
            return lab.id == labs[-1].id
        return weights.get(lab.annotator, 1.0) > 0 and latest_of[lab.annotator] == lab.id

    p = verdict.p_artifact if verdict is not None else None
    return PositionConsensus(
        x=first.x, y=first.y, z=first.z, w=first.w, h=first.h, audit=audit, aggregation=mode,
        verdict=None if p is None else ("artifact" if p > 0.5 else "clean"),
        p_artifact=p,
        training_weight=None if audit or verdict is None else verdict.weight,
        labels=[LabelVerdict(lab, weights.get(lab.annotator, 1.0), counted(lab)) for lab in labs],
    )  # fmt: skip
