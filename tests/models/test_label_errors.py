"""Out-of-fold label-error scores on tiny arrays: flipped labels of a separable set are found,
a clean set gives few suspects, too few labels of a class give none and say why."""

from __future__ import annotations

import numpy as np
import pytest

from models.label_errors import find_label_errors, fit_logistic, predict_logistic


def _blobs(n: int, *, positives: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two well separated Gaussian blobs in 4 dimensions."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < positives).astype(np.int64)
    x = rng.normal(size=(n, 4)) + 4.0 * y[:, None] * np.array([1.0, 1.0, 0.0, 0.0])
    return x, y


def test_flipped_labels_of_a_separable_set_are_found() -> None:
    x, y = _blobs(120, seed=1)
    given = y.copy()
    flipped = np.r_[np.nonzero(y == 0)[0][:4], np.nonzero(y == 1)[0][:3]]
    given[flipped] = 1 - given[flipped]
    found = find_label_errors(x, given, seed=2)
    assert found.reason is None
    suspects = set(found.suspects.tolist())
    # most flipped labels are suspects (one near the boundary may pass), hardly any other
    assert len(suspects & set(flipped.tolist())) >= 5
    assert len(suspects - set(flipped.tolist())) <= 1
    # suspects are ranked by score, and a flipped label scores higher than a correct one
    assert (np.diff(found.score[found.suspects]) <= 0).all()
    assert np.median(found.score[flipped]) > 0.9 > np.median(np.delete(found.score, flipped))
    assert np.allclose(found.score, 1.0 - found.p_given)


def test_a_clean_set_gives_few_suspects() -> None:
    x, y = _blobs(150, seed=3)
    found = find_label_errors(x, y, seed=0)
    assert found.suspect.sum() <= 2
    assert 0.5 < found.thresholds[0] <= 1.0 and 0.5 < found.thresholds[1] <= 1.0


def test_fewer_labels_of_a_class_than_folds_checks_nothing_and_says_why() -> None:
    x, y = _blobs(40, seed=4)
    y[:] = 0
    y[:3] = 1
    found = find_label_errors(x, y, folds=5)
    assert not found.suspect.any()
    assert np.isnan(found.p_given).all()
    assert found.reason is not None and "3 labels of class 1" in found.reason
    assert found.suspects.size == 0


def test_the_same_seed_gives_the_same_scores() -> None:
    x, y = _blobs(60, seed=5)
    y[:3] = 1 - y[:3]
    a = find_label_errors(x, y, seed=7)
    b = find_label_errors(x, y, seed=7)
    assert np.array_equal(a.p_given, b.p_given)


def test_bad_shapes_and_classes_are_refused() -> None:
    with pytest.raises(ValueError, match="features must be"):
        find_label_errors(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="0 or 1"):
        find_label_errors(np.zeros((3, 2)), np.array([0, 1, 2]))


def test_balanced_logistic_regression_separates_rare_positives() -> None:
    x, y = _blobs(200, positives=0.05, seed=6)
    w = fit_logistic(x, y, l2=1.0)
    p = predict_logistic(w, x)
    assert p[y == 1].min() > 0.5 > p[y == 0].max()
