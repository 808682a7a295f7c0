"""How several labels of one position become one: the dataset setting ``label_aggregation``,
annotators' label weights, and the Dawid-Skene consensus that training and audit use.

With ``consensus`` (the default) a position's verdict is the Dawid-Skene consensus over all
its labels, however they came (page, API, webKnossos, file imports), each annotator's verdicts
scaled by their admin-set label weight; an annotator at weight 0 is left out (their labels stay
stored). Training learns the consensus class (P(artifact) > 0.5) with a sample weight:

    weight = |2p - 1| * (the largest label weight among the annotators who said that class)

A soft target (p itself) was the other choice; a class per patch was kept because balanced
batches, the stratified validation split, the temperature and the F1 threshold all need one,
while the weight lets a doubtful consensus pull less, and a label never counts for more than
its annotator's weight.
Training's consensus also hears the model (CROWDLAB-style): the newest classifier's
out-of-fold P(artifact) of each position it trained on (:mod:`server.labels.model_view`) is
one more rater, the position's prior in place of the prevalence. It measures annotators who
share few patches with anyone, breaks a tie between a flipped label and its re-label, and
lets a label the model firmly contradicts, from an annotator the consensus trusts little,
count less or turn. Positions no classifier has seen yet, and every position of a dataset
before its first classifier, have no view: there a position labelled once by an annotator at
weight 1 has p of 0 or 1 and weight 1, as with ``latest``. The audit's consensus never hears
the model, so the audit verdicts that measure each version do not depend on it.

With ``latest`` the latest label of a position counts, at weight 1 (the behaviour before).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.consensus import dawid_skene
from server.db.tables import Annotator, Dataset, Label
from server.errors import InvalidInput

# how several labels of one patch become one (the dataset setting ``label_aggregation``)
LABEL_AGGREGATIONS = ("consensus", "latest")
DEFAULT_LABEL_AGGREGATION = LABEL_AGGREGATIONS[0]
# |2p - 1| below this is a tie: no class to learn
UNDECIDED = 1e-9


@dataclass(frozen=True)
class Verdict:
    """What one position says after aggregation."""

    label: Label  # the label that speaks for it: the latest one that holds the verdict
    weight: float  # how much it counts in training
    p_artifact: float  # the consensus P(artifact) (0 or 1 with ``latest``)


def label_aggregation(dataset: Dataset) -> str:
    """The dataset's ``label_aggregation`` setting, or the default."""
    value = (dataset.settings or {}).get("label_aggregation", DEFAULT_LABEL_AGGREGATION)
    return check_aggregation(value)


def check_aggregation(value: object) -> str:
    if value not in LABEL_AGGREGATIONS:
        raise InvalidInput(
            f"label_aggregation must be {' or '.join(LABEL_AGGREGATIONS)}, not {value!r}"
        )
    return str(value)


def label_weights(session: Session) -> dict[str, float]:
    """Every annotator's label weight whose weight is not 1 (names without a row count 1)."""
    rows = session.execute(
        select(Annotator.name, Annotator.label_weight).where(Annotator.label_weight != 1.0)
    ).all()
    return {name: float(weight) for name, weight in rows}


def aggregate(
    groups: Mapping[Hashable, list[Label]],
    *,
    mode: str,
    weights: Mapping[str, float],
    model: Mapping[Hashable, float] | None = None,
) -> dict[Hashable, Verdict]:
    """One verdict per position from its labels (oldest first); see the module docstring.
    ``model``: per position, a model's out-of-fold P(artifact), one more rater in the
    consensus (ignored with ``latest``). A position left without a verdict (only excluded
    annotators, a tie, or a consensus no label holds) is missing from the answer."""
    if mode == "latest":
        return {
            key: Verdict(labs[-1], 1.0, _said(labs[-1])) for key, labs in groups.items() if labs
        }
    check_aggregation(mode)
    counted = {
        key: [lab for lab in labs if weights.get(lab.annotator, 1.0) > 0]
        for key, labs in groups.items()
    }
    counted = {key: labs for key, labs in counted.items() if labs}
    triples = [
        (key, lab.annotator, int(lab.label == "artifact"))
        for key, labs in counted.items()
        for lab in labs
    ]
    consensus = dawid_skene(
        triples, weights={a: w for a, w in weights.items() if w > 0}, model=model
    )
    p_of = dict(zip(consensus.patches, consensus.p_artifact.tolist(), strict=True))
    out: dict[Hashable, Verdict] = {}
    for key, labs in counted.items():
        p = p_of[key]
        if abs(2 * p - 1) < UNDECIDED:
            continue
        chosen = _speaker(labs, artifact=p > 0.5)
        if chosen is None:
            continue
        strongest = max(
            weights.get(lab.annotator, 1.0) for lab in _latest_per_annotator(labs)
            if (lab.label == "artifact") == (p > 0.5)
        )  # fmt: skip
        out[key] = Verdict(chosen, abs(2 * p - 1) * strongest, p)
    return out


def _said(label: Label) -> float:
    return 1.0 if label.label == "artifact" else 0.0


def _latest_per_annotator(labels: Iterable[Label]) -> list[Label]:
    """Each annotator's latest verdict (an annotator who judged twice changed their mind)."""
    return list({lab.annotator: lab for lab in labels}.values())


def _speaker(labels: list[Label], *, artifact: bool) -> Label | None:
    """The latest label that holds the verdict; for an artifact, the latest that also names
    its type, where one does."""
    holding = sorted(
        (lab for lab in _latest_per_annotator(labels) if (lab.label == "artifact") == artifact),
        key=lambda lab: lab.id,
    )
    if not holding:
        return None
    typed = [lab for lab in holding if lab.artifact_type is not None]
    return (typed or holding)[-1]
