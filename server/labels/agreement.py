"""Annotators of a dataset side by side: labels, pace, consensus, reliability and agreement."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.consensus import (
    Estimate,
    dawid_skene,
    krippendorff_alpha,
    pairwise_kappa,
)
from server.db.tables import Annotator, Label
from server.labels.model_view import model_view

# Labels given one at a time carry the moment they were given; imported or synced ones carry
# the moment of the import or sync, which says nothing about a person's pace.
TIMED_SOURCES = ("ui", "api")
# a longer pause between two labels is a break, not labelling time
BREAK = timedelta(minutes=10)
SEED = 0


@dataclass(frozen=True)
class AnnotatorRow:
    annotator: str
    labels: int
    clean: int
    artifact: int
    labels_per_hour: Estimate
    agreement_with_consensus: Estimate
    reliability: Estimate
    sensitivity: float | None
    specificity: float | None
    label_weight: float
    label_weight_reason: str | None


@dataclass(frozen=True)
class AnnotatorReport:
    labels: int
    patches: int
    patches_with_several: int
    annotators: list[AnnotatorRow]
    pairs: list[dict[str, Any]]
    alpha: Estimate


def labels_per_hour(times: list[datetime]) -> Estimate:
    """Labels per hour of active time: the gaps between consecutive labels, breaks left out."""
    if not times:
        why = "no label given in the page or API (imported and synced labels carry no time)"
        return Estimate(None, None, 0, why)
    if len(times) < 2:
        return Estimate(None, None, 1, "only one label given in the page or API")
    ordered = sorted(times)
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    active = [g for g in gaps if g <= BREAK]
    seconds = sum(g.total_seconds() for g in active)
    if not active or seconds <= 0:
        return Estimate(None, None, len(times), "no two labels within ten minutes of each other")
    return Estimate(len(active) / seconds * 3600.0, None, len(active))


def annotator_report(session: Session, *, dataset_id: int) -> AnnotatorReport:
    rows = session.execute(
        select(
            Label.id, Label.x, Label.y, Label.z, Label.w, Label.h, Label.annotator, Label.label,
            Label.source, Label.created_at,
        )
        .where(Label.dataset_id == dataset_id)
        .order_by(Label.id)
    ).all()  # fmt: skip
    triples = [((r.x, r.y, r.z, r.w, r.h), r.annotator, int(r.label == "artifact")) for r in rows]
    classes: dict[str, Counter[str]] = defaultdict(Counter)
    timed: dict[str, list[datetime]] = defaultdict(list)
    for r in rows:
        classes[r.annotator][r.label] += 1
        if r.source in TIMED_SOURCES and r.created_at is not None:
            timed[r.annotator].append(r.created_at)

    # everyone is measured alike, counted in training or not: the figures are what an admin
    # weighs when setting a label weight
    # the newest classifier's out-of-fold view of the positions it trained on is one more
    # rater, so an annotator's labels that nobody else saw are measured too
    viewed = model_view(session, dataset_id=dataset_id)
    model = {(r.x, r.y, r.z, r.w, r.h): viewed[r.id] for r in rows if r.id in viewed}
    consensus = dawid_skene(triples, model=model)
    weights = {
        name: (float(w), reason)
        for name, w, reason in session.execute(
            select(Annotator.name, Annotator.label_weight, Annotator.label_weight_reason)
        ).all()
    }
    annotators = []
    for q in consensus.annotators:
        name = str(q.annotator)
        agreement_reason = None if q.agreement is not None else q.reason
        annotators.append(
            AnnotatorRow(
                annotator=name,
                labels=sum(classes[name].values()),
                clean=classes[name]["clean"],
                artifact=classes[name]["artifact"],
                labels_per_hour=labels_per_hour(timed[name]),
                agreement_with_consensus=Estimate(q.agreement, None, q.shared, agreement_reason),
                reliability=Estimate(q.reliability, None, q.shared, q.reason),
                sensitivity=q.sensitivity,
                specificity=q.specificity,
                label_weight=weights.get(name, (1.0, None))[0],
                label_weight_reason=weights.get(name, (1.0, None))[1],
            )
        )
    pairs = [
        {"first": str(p.first), "second": str(p.second), "kappa": p.kappa}
        for p in pairwise_kappa(triples, seed=SEED)
    ]
    return AnnotatorReport(
        labels=len(rows),
        patches=len(consensus.patches),
        patches_with_several=int((consensus.labels_per_patch >= 2).sum()),
        annotators=annotators,
        pairs=pairs,
        alpha=krippendorff_alpha(triples, seed=SEED),
    )
