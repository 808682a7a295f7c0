"""Label errors: labels that the consensus of every label with the model contradicts.

A model's view of each labelled patch comes out of fold (:func:`out_of_fold`: K-fold,
class-balanced logistic regression on per-label features, NumPy Newton steps, moved to the
labels' prevalence by :func:`at_prevalence`), so no label judges itself. That view joins the
annotators as one more rater in a Dawid-Skene consensus (CROWDLAB-style,
:func:`contradicted`): each label gets P(it is wrong) from the model's view, the other labels of
its patch and how reliable its annotator proved against both. A label of an annotator who is
often contradicted is doubted sooner than one of an annotator who is seldom wrong; a label is
suspect from ``SUSPECT_AT``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from models.consensus import Triple, dawid_skene

DEFAULT_FOLDS = 5
# a label is suspect when the consensus with the model holds it wrong with at least this
# probability. Chosen with the product's view (the classifier's features and own logit, read
# out of fold) on 15 seeds of the annotator-noise benchmark (one annotator of three flipping
# 20%): the kept stores of seeds 10-14 and 20-24 and the run of seeds 0-4 held recall 0.7 at
# precision 0.5 in every seed from 0.1 to 0.125 (precision 0.58 or more from 0.1, where recall
# has the most room); confirmed on seeds 5-9 (README, "Several annotators").
SUSPECT_AT = 0.1


def out_of_fold(
    features: np.ndarray, labels: np.ndarray, *, folds: int, seed: int, l2: float = 1.0
) -> np.ndarray:
    """Each label's P(class 1) from a class-balanced logistic regression fitted on the other
    folds (features standardised on those folds). Balanced: read it as if the classes were
    equally common (:func:`at_prevalence` moves it to the labels' own). Each class needs at
    least ``folds`` labels, or a fold would lack it."""
    x = np.nan_to_num(np.asarray(features, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    y = np.asarray(labels).astype(np.int64).ravel()
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features must be (n, d) for n = {len(y)} labels, not {x.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if (counts := np.bincount(y, minlength=2)).min() < folds:
        raise ValueError(f"{folds} folds need {folds} labels of each class, not {counts.tolist()}")
    p_one = np.empty(len(y), dtype=np.float64)
    fold = stratified_folds(y, folds=folds, seed=seed)
    for k in range(folds):
        held = fold == k
        mean = x[~held].mean(0)
        std = x[~held].std(0)
        std[std < 1e-9] = 1.0
        w = fit_logistic((x[~held] - mean) / std, y[~held], l2=l2)
        p_one[held] = predict_logistic(w, (x[held] - mean) / std)
    return p_one


def at_prevalence(p_balanced: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A class-balanced model's P(class 1) moved to the prevalence of ``labels`` (Bayes' rule
    on the odds: the balancing multiplied them by n0 / n1)."""
    y = np.asarray(labels).astype(np.int64).ravel()
    n1, n0 = max(int(y.sum()), 1), max(int(len(y) - y.sum()), 1)
    p = np.clip(np.asarray(p_balanced, np.float64), 1e-12, 1 - 1e-12)
    return _sigmoid(np.log(p / (1 - p)) + np.log(n1 / n0))


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


def contradicted(
    triples: Sequence[Triple],
    *,
    model: Mapping[Hashable, float],
    weights: Mapping[Hashable, float] | None = None,
) -> np.ndarray:
    """Per (patch, annotator, verdict) triple: P(the verdict is wrong) under the Dawid-Skene
    consensus of all the verdicts with ``model`` (a model's out-of-fold P(artifact) per patch)
    as one more rater. A patch the model has no view of and nobody else judged keeps its
    verdict (0)."""
    if not triples:
        return np.zeros(0)
    consensus = dawid_skene(triples, weights=weights, model=model)
    p_of = dict(zip(consensus.patches, consensus.p_artifact.tolist(), strict=True))
    return np.array([1.0 - p_of[p] if v == 1 else p_of[p] for p, _, v in triples])
