"""Which verdict training and the audit learn from when several annotators labelled a patch:
the Dawid-Skene consensus, weighted by each annotator's label weight, or (``latest``) the
latest label. Each test runs on PostgreSQL inside a rolled-back transaction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session

from server.db.tables import Dataset
from server.labels.model_view import MODEL_VIEW
from server.labels.training_set import audit_labels, training_labels, training_set
from tests import factories as make

pytestmark = pytest.mark.postgres

# bob and cat are right throughout; dan is wrong on the patches at x = 0 and x = 140
TRUTH = {0: "artifact", 140: "clean", 280: "clean", 420: "artifact"}
WRONG_BY_DAN = {0, 140}


def _flip(label: str) -> str:
    return "clean" if label == "artifact" else "artifact"


def _three_annotators(session: Session, ds: Dataset) -> None:
    """Four patches of row y = 0 labelled by bob, cat and dan (dan last); bob names the type
    of an artifact, cat does not."""
    for x, truth in TRUTH.items():
        typed = {"artifact_type": "debris"} if truth == "artifact" else {}
        make.label(session, ds, x=x, label=truth, annotator="bob", **typed)
        make.label(session, ds, x=x, label=truth, annotator="cat")
        make.label(
            session, ds, x=x, annotator="dan",
            label=_flip(truth) if x in WRONG_BY_DAN else truth,
        )  # fmt: skip


def test_three_annotators_disagreeing_train_on_their_consensus(session: Session) -> None:
    ds = make.dataset(session)
    _three_annotators(session, ds)
    make.label(session, ds, y=140, label="artifact", annotator="bob")  # labelled once
    chosen = training_set(session, dataset=ds)
    assert chosen.aggregation == "consensus"
    by_position = {
        (lab.x, lab.y): (lab, w) for lab, w in zip(chosen.labels, chosen.weights, strict=True)
    }
    assert set(by_position) == {(x, 0) for x in TRUTH} | {(0, 140)}
    for x, truth in TRUTH.items():
        lab, weight = by_position[(x, 0)]
        assert lab.label == truth, f"two against dan at x = {x}: the consensus holds"
        assert 0.5 < weight < 1, "three labels: surer than a coin, not certain"
        if truth == "artifact":
            # the type of a label that agrees with the consensus
            assert lab.artifact_type == "debris" and lab.annotator == "bob"
    # where all three agree the consensus is surer than where dan disagrees
    assert by_position[(280, 0)][1] > by_position[(140, 0)][1]
    once, weight = by_position[(0, 140)]
    assert (once.label, weight) == ("artifact", 1.0), "one label: as before, weight 1"


def test_latest_mode_keeps_the_latest_label_of_each_position(session: Session) -> None:
    ds = make.dataset(session, settings={"label_aggregation": "latest"})
    _three_annotators(session, ds)
    chosen = training_set(session, dataset=ds)
    assert chosen.aggregation == "latest" and chosen.weights == [1.0] * 4
    assert [(lab.x, lab.annotator) for lab in chosen.labels] == [(x, "dan") for x in TRUTH]
    assert [lab.label for lab in chosen.labels] == [
        _flip(t) if x in WRONG_BY_DAN else t for x, t in TRUTH.items()
    ]


def test_an_excluded_annotator_counts_nowhere_and_a_down_weighted_one_counts_less(
    session: Session,
) -> None:
    ds = make.dataset(session)
    make.annotator(session, name="dan", label_weight=0.0, label_weight_reason="flips labels")
    make.annotator(session, name="eve", label_weight=0.5)
    # bob and dan disagree, dan last: without dan, bob's label alone counts
    make.label(session, ds, x=0, label="artifact", annotator="bob")
    make.label(session, ds, x=0, label="clean", annotator="dan")
    make.label(session, ds, x=140, label="artifact", annotator="dan")  # dan alone: gone
    make.label(session, ds, x=280, label="artifact", annotator="eve")  # eve alone: half
    chosen = training_set(session, dataset=ds)
    got = {
        lab.x: (lab.annotator, lab.label, w)
        for lab, w in zip(chosen.labels, chosen.weights, strict=True)
    }
    assert got == {0: ("bob", "artifact", 1.0), 280: ("eve", "artifact", 0.5)}
    assert len(training_labels(session, dataset=ds)) == 2


def test_the_audit_measures_on_the_consensus_of_an_audit_patch(session: Session) -> None:
    ds = make.dataset(session)
    a = make.task(session, ds, grid_index=21, kind="audit")  # z = 1: off the training row
    _three_annotators(session, ds)
    make.label(session, ds, x=a.x, y=a.y, z=a.z, label="artifact", annotator="bob")
    make.label(session, ds, x=a.x, y=a.y, z=a.z, label="artifact", annotator="cat")
    make.label(session, ds, x=a.x, y=a.y, z=a.z, label="clean", annotator="dan")
    (verdict,) = audit_labels(session, dataset=ds)
    assert (verdict.label, verdict.annotator) == ("artifact", "cat")
    assert all(lab.z == 0 for lab in training_labels(session, dataset=ds)), "never trained on"
    ds.settings = {"label_aggregation": "latest"}
    (latest,) = audit_labels(session, dataset=ds)
    assert (latest.label, latest.annotator) == ("clean", "dan")


def _with_model_view(session: Session, ds: Dataset, folder: Path, view: dict[int, float]) -> None:
    """A ready classifier whose label check left its out-of-fold view of these labels."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / MODEL_VIEW,
        label_id=np.array(list(view), dtype=np.int64),
        p_artifact=np.array(list(view.values()), dtype=np.float32),
    )
    make.version(session, ds, kind="classifier", weights_path=str(folder / "weights.pt"))


def test_the_model_view_breaks_a_tie_in_training_and_never_reaches_the_audit(
    session: Session, tmp_path: Path
) -> None:
    ds = make.dataset(session)
    # a flipped label and its re-label by someone else, neither measured: a tie
    flipped = make.label(session, ds, x=0, label="clean", annotator="dan")
    make.label(session, ds, x=0, label="artifact", annotator="bob")
    a = make.task(session, ds, grid_index=21, kind="audit")
    audit_first = make.label(session, ds, x=a.x, y=a.y, z=a.z, label="clean", annotator="dan")
    make.label(session, ds, x=a.x, y=a.y, z=a.z, label="artifact", annotator="bob")
    assert training_set(session, dataset=ds).labels == [], "a tie: nothing to learn"
    assert audit_labels(session, dataset=ds) == []

    # the model trained on dan's label, yet out of fold it sees an artifact there
    _with_model_view(session, ds, tmp_path / "v1", {flipped.id: 0.9, audit_first.id: 0.9})
    chosen = training_set(session, dataset=ds)
    ((lab, weight),) = zip(chosen.labels, chosen.weights, strict=True)
    assert (lab.label, lab.annotator) == ("artifact", "bob")
    assert 0 < weight < 1, "a tie broken by the model alone is not certain"
    assert audit_labels(session, dataset=ds) == [], "the audit never hears the model"
    # latest ignores the view
    ds.settings = {"label_aggregation": "latest"}
    (latest,) = training_set(session, dataset=ds).labels
    assert latest.annotator == "bob"


def test_a_label_the_model_firmly_contradicts_counts_less_once_it_has_a_view(
    session: Session, tmp_path: Path
) -> None:
    ds = make.dataset(session)
    labels = [make.label(session, ds, x=140 * i, label="clean", annotator="dan") for i in range(4)]
    before = training_set(session, dataset=ds)
    assert before.weights == [1.0] * 4, "no classifier yet: one label counts fully"
    # the model agrees on three and firmly sees an artifact at the fourth
    view = {lab.id: 0.05 for lab in labels[:3]} | {labels[3].id: 0.97}
    _with_model_view(session, ds, tmp_path / "v1", view)
    chosen = training_set(session, dataset=ds)
    after = {lab.x: w for lab, w in zip(chosen.labels, chosen.weights, strict=True)}
    doubted = after.get(420, 0.0)
    assert all(after[140 * i] > doubted for i in range(3))
    assert doubted < 0.9
