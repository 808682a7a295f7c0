"""Label errors on tiny arrays: out-of-fold probabilities doubt flipped labels, and the consensus
with the model as one more rater finds the noisy annotator's flips."""

from __future__ import annotations

import numpy as np
import pytest

from models.label_errors import (
    SUSPECT_AT,
    at_prevalence,
    contradicted,
    fit_logistic,
    out_of_fold,
    predict_logistic,
)


def _blobs(n: int, *, positives: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two well separated Gaussian blobs in 4 dimensions."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < positives).astype(np.int64)
    x = rng.normal(size=(n, 4)) + 4.0 * y[:, None] * np.array([1.0, 1.0, 0.0, 0.0])
    return x, y


def test_out_of_fold_probabilities_doubt_the_flipped_labels_of_a_separable_set() -> None:
    x, y = _blobs(120, seed=1)
    given = y.copy()
    flipped = np.r_[np.nonzero(y == 0)[0][:4], np.nonzero(y == 1)[0][:3]]
    given[flipped] = 1 - given[flipped]
    p = out_of_fold(x, given, folds=5, seed=2)
    p_given = np.where(given == 1, p, 1 - p)
    # no label judges itself: the flipped ones get a low probability of what they say
    assert np.median(p_given[flipped]) < 0.1 < 0.9 < np.median(np.delete(p_given, flipped))
    assert np.array_equal(p, out_of_fold(x, given, folds=5, seed=2))  # same seed, same answer


def test_bad_shapes_classes_and_too_few_labels_of_a_class_are_refused() -> None:
    with pytest.raises(ValueError, match="features must be"):
        out_of_fold(np.zeros((3, 2)), np.zeros(4), folds=2, seed=0)
    with pytest.raises(ValueError, match="0 or 1"):
        out_of_fold(np.zeros((3, 2)), np.array([0, 1, 2]), folds=2, seed=0)
    x, y = _blobs(40, seed=4)
    y[:] = 0
    y[:3] = 1
    with pytest.raises(ValueError, match=r"5 labels of each class, not \[37, 3\]"):
        out_of_fold(x, y, folds=5, seed=0)


def test_balanced_logistic_regression_separates_rare_positives() -> None:
    x, y = _blobs(200, positives=0.05, seed=6)
    w = fit_logistic(x, y, l2=1.0)
    p = predict_logistic(w, x)
    assert p[y == 1].min() > 0.5 > p[y == 0].max()


def test_the_consensus_with_the_model_doubts_the_noisy_annotator_sooner() -> None:
    """Three annotators, each patch labelled once, one of them flipping a fifth of their
    labels; the model is an out-of-fold logistic regression on the features. The flipped
    labels are the ones found, and a model doubt alone does not overturn a reliable label."""
    rng = np.random.default_rng(4)
    x, y = _blobs(300, seed=4)
    x = x + rng.normal(scale=1.5, size=x.shape)  # overlapping blobs: the model errs too
    names = ["a", "b", "noisy"]
    who = [names[i % 3] for i in range(len(y))]
    flipped = np.array([w == "noisy" and rng.random() < 0.2 for w in who])
    given = np.where(flipped, 1 - y, y)
    model = at_prevalence(out_of_fold(x, given, folds=5, seed=0), given)
    assert model.min() > 0.0 and model.max() < 1.0
    triples = [(i, w, int(g)) for i, (w, g) in enumerate(zip(who, given, strict=True))]
    wrong = contradicted(triples, model=dict(enumerate(model.tolist())))
    suspect = wrong >= SUSPECT_AT
    hits = int((suspect & flipped).sum())
    assert hits >= 0.7 * flipped.sum(), (hits, int(flipped.sum()))
    assert hits >= 0.5 * suspect.sum(), (hits, int(suspect.sum()))
    reliable = np.array([w != "noisy" for w in who])
    assert (wrong[reliable] >= SUSPECT_AT).mean() < 0.05


def test_a_position_without_a_model_view_keeps_its_only_verdict() -> None:
    triples = [(0, "a", 1), (1, "a", 0), (1, "b", 1), (1, "c", 1)]
    wrong = contradicted(triples, model={})
    assert wrong[0] == 0.0
    assert wrong[1] > 0.5 > wrong[2]  # outvoted two to one
    assert contradicted([], model={}).shape == (0,)


def test_at_prevalence_undoes_the_class_balancing() -> None:
    labels = np.array([1] * 10 + [0] * 90)
    assert at_prevalence(np.array([0.5]), labels)[0] == pytest.approx(0.1)
