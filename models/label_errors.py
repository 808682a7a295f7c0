"""Label errors, confident-learning style: labels the model confidently contradicts out of fold.

Each label's feature vector (e.g. the trained classifier's pooled features of the labelled
patch) and its given class go through K-fold, class-balanced logistic regression (NumPy, Newton steps), so every
label gets P(given label) from a model that never saw it. A class's threshold is its mean
self-confidence (the mean out-of-fold P(class) over the labels given that class). A label is
suspect when its P(given label) is below its class's threshold and the other class's
probability reaches that class's threshold. The score, 1 - P(given label), ranks labels by how
strongly the model disagrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class LabelErrors:
    """Per label (in the order given): out-of-fold P(given label), the score (1 - that) and
    whether it is suspect; the per-class thresholds; ``reason`` says why nothing was checked."""

    p_given: np.ndarray  # float, NaN where not checked
    score: np.ndarray  # float in [0, 1], NaN where not checked
    suspect: np.ndarray  # bool
    thresholds: tuple[float, float]  # (class 0, class 1); NaN where not checked
    reason: str | None = None

    @property
    def suspects(self) -> np.ndarray:
        """Indices of the suspect labels, highest score first."""
        found = np.nonzero(self.suspect)[0]
        return found[np.argsort(-self.score[found], kind="stable")]


def find_label_errors(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    l2: float = 1.0,
) -> LabelErrors:
    """Out-of-fold label-error scores of binary ``labels`` (0/1) given per-label ``features``
    (n, d). With fewer than ``folds`` labels of either class nothing is checked (every label
    not suspect, ``reason`` set): a fold would lack that class."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64).ravel()
    n = len(y)
    if x.ndim != 2 or len(x) != n:
        raise ValueError(f"features must be (n, d) for n = {n} labels, not {x.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    counts = np.bincount(y, minlength=2)
    if counts.min() < folds:
        fewest = int(np.argmin(counts))
        return _unchecked(
            n,
            f"{int(counts[fewest])} labels of class {fewest}: at least {folds} of each class "
            f"are needed for {folds}-fold out-of-fold probabilities",
        )
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    p_one = np.empty(n, dtype=np.float64)
    fold = stratified_folds(y, folds=folds, seed=seed)
    for k in range(folds):
        held = fold == k
        mean = x[~held].mean(0)
        std = x[~held].std(0)
        std[std < 1e-9] = 1.0
        w = fit_logistic((x[~held] - mean) / std, y[~held], l2=l2)
        p_one[held] = predict_logistic(w, (x[held] - mean) / std)
    p_given = np.where(y == 1, p_one, 1.0 - p_one)
    thresholds = (float(p_given[y == 0].mean()), float(p_given[y == 1].mean()))
    own = np.asarray(thresholds)[y]
    other = np.asarray(thresholds)[1 - y]
    suspect = (p_given < own) & (1.0 - p_given >= other)
    return LabelErrors(p_given=p_given, score=1.0 - p_given, suspect=suspect, thresholds=thresholds)


def stratified_folds(y: np.ndarray, *, folds: int, seed: int) -> np.ndarray:
    """A fold number per label, each class dealt round-robin over the folds in a seeded
    random order (every fold holds about the same share of each class)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for cls in np.unique(y):
        members = rng.permutation(np.nonzero(y == cls)[0])
        fold[members] = (np.arange(len(members)) + rng.integers(folds)) % folds
    return fold


def fit_logistic(
    x: np.ndarray, y: np.ndarray, *, l2: float = 1.0, iterations: int = 50
) -> np.ndarray:
    """Class-balanced, L2-penalised logistic regression by Newton's method: weights with the
    intercept last. Each class weighs as much in all as the other (``n / (2 n_class)`` per
    label), as rare artifacts would otherwise be drowned out; the intercept is not penalised."""
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    counts = np.bincount(y, minlength=2).astype(np.float64)
    weight = (n / (2.0 * np.maximum(counts, 1.0)))[y]
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    w = np.zeros(d + 1)
    for _ in range(iterations):
        p = _sigmoid(design @ w)
        gradient = design.T @ (weight * (p - y)) + penalty * w
        curvature = weight * p * (1.0 - p)
        hessian = (design * curvature[:, None]).T @ design + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def predict_logistic(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """P(class 1) of rows ``x`` under weights from :func:`fit_logistic`."""
    return _sigmoid(x @ w[:-1] + w[-1])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


def _unchecked(n: int, reason: str) -> LabelErrors:
    nan = np.full(n, np.nan)
    return LabelErrors(
        p_given=nan, score=nan.copy(), suspect=np.zeros(n, dtype=bool),
        thresholds=(float("nan"), float("nan")), reason=reason,
    )  # fmt: skip
