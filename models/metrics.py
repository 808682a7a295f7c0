"""Classification metrics on a held-out set with the real prevalence (NumPy only)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> list[list[int]]:
    """[[tn, fp], [fn, tp]]."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    return [[int((~t & ~p).sum()), int((~t & p).sum())], [int((t & ~p).sum()), int((t & p).sum())]]


def pr_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and thresholds at every distinct score, highest threshold first."""
    t = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], s.size - 1] if s.size else np.array([], int)
    tp = np.cumsum(t)[distinct]
    fp = (distinct + 1) - tp
    positives = max(int(t.sum()), 1)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / positives
    return precision, recall, s[distinct]


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """PR-AUC as average precision: sum over thresholds of (R_n - R_{n-1}) P_n."""
    if not np.asarray(y_true).astype(bool).any():
        return float("nan")
    precision, recall, _ = pr_curve(y_true, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    t = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size, dtype=np.float64)
    sorted_vals = values[order]
    i = 0
    while i < values.size:
        j = i
        while j + 1 < values.size and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def precision_at_recall(y_true: np.ndarray, scores: np.ndarray, recall: float = 0.9) -> float:
    """Best precision among thresholds that reach at least ``recall``."""
    if not np.asarray(y_true).astype(bool).any():
        return float("nan")
    precision, rec, _ = pr_curve(y_true, scores)
    ok = rec >= recall - 1e-12
    return float(precision[ok].max()) if ok.any() else 0.0


# Below this many audit artifacts (or clean audit patches) a metric is not measured: it reads
# "not enough audit artifacts (n)" with no value and no interval. With 1-4 artifacts a single
# patch moves PR-AUC by 0.2 or more, and a bootstrap of a perfect ranking collapses to a point.
MIN_AUDIT_ARTIFACTS = 5
METRIC_NAMES = ("f1", "pr_auc", "precision_at_recall_0.9")


def not_measured_reason(positives: int, negatives: int, *, minimum: int) -> str | None:
    """Why a set with these counts measures nothing, or ``None`` when it measures."""
    if positives < minimum:
        return f"not enough audit artifacts ({positives})"
    if negatives < minimum:
        return f"not enough clean audit patches ({negatives})"
    return None


def report_not_measured(audit: dict[str, Any] | None) -> str | None:
    """Why a stored audit report (older ones included) measures nothing, or ``None``: what
    the CLI, the demo table and the README print in place of a number."""
    if not audit or not audit.get("n"):
        return "no audit labels"
    if audit.get("not_measured"):
        return str(audit["not_measured"])
    positives = int(audit.get("positives") or 0)
    negatives = audit.get("negatives")
    clean = int(audit["n"]) - positives if negatives is None else int(negatives)
    return not_measured_reason(positives, clean, minimum=MIN_AUDIT_ARTIFACTS)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by its continued fraction (Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-12:
            break
    return math.exp(log_front) * f / a


def _beta_quantile(q: float, a: float, b: float) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(60):  # bisection: 2^-60 is below float resolution of a rounded interval
        mid = (lo + hi) / 2
        if _betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def exact_interval(successes: float, trials: float, *, level: float = 0.95) -> list[float]:
    """Clopper-Pearson interval of a proportion ``successes / trials`` (successes may be
    fractional: a mean of ``trials`` values in [0, 1]). It never collapses to a point: with
    5 of 5 the lower end is 0.48, with 20 of 20 it is 0.83."""
    tail = (1 - level) / 2
    k, n = float(successes), float(trials)
    lo = 0.0 if k <= 0 else _beta_quantile(tail, k, n - k + 1)
    hi = 1.0 if k >= n else _beta_quantile(1 - tail, k + 1, n - k)
    return [lo, hi]


def _resampled(
    truth: np.ndarray, score: np.ndarray, *, threshold: float, positives: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F1, average precision and precision at recall 0.9 of each row (one resample)."""
    pred = score >= threshold
    tp = (pred & truth).sum(axis=1)
    fp = (pred & ~truth).sum(axis=1)
    fn = (~pred & truth).sum(axis=1)
    f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    # ranking metrics of all rows at once: sort each row by score, highest first
    order = np.argsort(-score, axis=1, kind="stable")
    hits = np.take_along_axis(truth, order, axis=1)
    tp_at = np.cumsum(hits, axis=1)
    precision_at = tp_at / np.arange(1, hits.shape[1] + 1)
    pr_auc = (precision_at * hits).sum(axis=1) / positives
    reached = tp_at >= 0.9 * positives - 1e-9
    p90 = np.where(reached, precision_at, 0.0).max(axis=1)
    return f1, pr_auc, p90


def _stratified_rows(truth: np.ndarray, *, resamples: int, seed: int) -> tuple[np.ndarray, int]:
    """Resample indices: artifacts and clean patches drawn separately, so every resample
    keeps the set's counts of each."""
    pos, neg = np.flatnonzero(truth), np.flatnonzero(~truth)
    rng = np.random.default_rng(seed)
    idx = np.concatenate(
        [
            pos[rng.integers(0, pos.size, size=(resamples, pos.size))],
            neg[rng.integers(0, neg.size, size=(resamples, neg.size))],
        ],
        axis=1,
    )
    return idx, int(pos.size)


def _effective_trials(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """How many patches each metric averages over, for its exact interval: F1 =
    tp / (tp + (fp + fn) / 2); the ranking metrics average over the artifacts."""
    tp = float((pred & truth).sum())
    wrong = float((pred & ~truth).sum() + (~pred & truth).sum())
    positives = float(truth.sum())
    return {
        "f1": max(tp + wrong / 2, 1.0),
        "pr_auc": positives,
        "precision_at_recall_0.9": positives,
    }


def bootstrap_intervals(
    y_true: np.ndarray,
    scores: np.ndarray,
    *,
    threshold: float = 0.5,
    resamples: int = 500,
    level: float = 0.95,
    seed: int = 0,
    min_artifacts: int = 1,
) -> dict[str, list[float] | None]:
    """95% intervals of F1, PR-AUC and precision at recall 0.9: the hull of a stratified
    percentile bootstrap (artifacts and clean patches resampled separately) and the exact
    Clopper-Pearson interval of the value over the patches it averages. A bootstrap alone
    collapses to a point when the ranking is perfect (every resample is perfect too); the
    exact interval keeps the width that a handful of artifacts allows. Below
    ``min_artifacts`` of either class every interval is ``None``."""
    t = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not_measured_reason(int(t.sum()), int((~t).sum()), minimum=max(min_artifacts, 1)):
        return dict.fromkeys(METRIC_NAMES, None)
    idx, positives = _stratified_rows(t, resamples=resamples, seed=seed)
    values = _resampled(t[idx], s[idx], threshold=threshold, positives=positives)
    point = _resampled(t[None, :], s[None, :], threshold=threshold, positives=positives)
    trials = _effective_trials(t, s >= threshold)
    tail = (1 - level) / 2 * 100
    out: dict[str, list[float] | None] = {}
    for name, boot, at in zip(METRIC_NAMES, values, point, strict=True):
        lo, hi = np.percentile(boot, [tail, 100 - tail])
        n = trials[name]
        exact = exact_interval(float(at[0]) * n, n, level=level)
        out[name] = [round(min(float(lo), exact[0]), 4), round(max(float(hi), exact[1]), 4)]
    return out


def paired_difference(
    y_true: np.ndarray,
    scores: np.ndarray,
    baseline: np.ndarray,
    *,
    threshold: float = 0.5,
    baseline_threshold: float = 0.5,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    min_artifacts: int = MIN_AUDIT_ARTIFACTS,
) -> dict[str, Any]:
    """Difference ``scores`` minus ``baseline`` of each headline metric on the same patches,
    with a paired stratified bootstrap interval: each resample draws the same patches for
    both versions, so what the two share (hard patches, lucky draws) cancels. Where every
    resample gives the same difference (both rankings perfect, say) the interval widens to
    the difference of the two exact intervals. Below the minimum: ``difference`` and
    ``interval`` are ``None`` and ``reason`` says why."""
    t = np.asarray(y_true).astype(bool)
    a = np.asarray(scores, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    positives, negatives = int(t.sum()), int((~t).sum())
    base: dict[str, Any] = {"patches": int(t.size), "artifacts": positives}
    reason = not_measured_reason(positives, negatives, minimum=max(min_artifacts, 1))
    if reason:
        return {**base, "reason": reason, **{n: None for n in METRIC_NAMES}}
    idx, _ = _stratified_rows(t, resamples=resamples, seed=seed)
    mine = _resampled(t[idx], a[idx], threshold=threshold, positives=positives)
    theirs = _resampled(t[idx], b[idx], threshold=baseline_threshold, positives=positives)
    at_a = _resampled(t[None, :], a[None, :], threshold=threshold, positives=positives)
    at_b = _resampled(t[None, :], b[None, :], threshold=baseline_threshold, positives=positives)
    tail = (1 - level) / 2 * 100
    out: dict[str, Any] = {**base, "reason": None}
    for i, name in enumerate(METRIC_NAMES):
        diff = float(at_a[i][0] - at_b[i][0])
        lo, hi = (float(v) for v in np.percentile(mine[i] - theirs[i], [tail, 100 - tail]))
        if hi - lo < 1e-9:
            own = bootstrap_intervals(t, a, threshold=threshold, level=level, seed=seed)[name]
            other = bootstrap_intervals(t, b, threshold=baseline_threshold, level=level, seed=seed)[
                name
            ]
            assert own is not None and other is not None
            lo, hi = min(lo, own[0] - other[1]), max(hi, own[1] - other[0])
        out[name] = {"difference": round(diff, 4), "interval": [round(lo, 4), round(hi, 4)]}
    return out


def classification_report(
    y_true: np.ndarray, scores: np.ndarray, *, threshold: float = 0.5, min_artifacts: int = 1
) -> dict[str, Any]:
    """Everything the dashboard and the benchmark report, JSON-ready; ``intervals`` holds
    95% intervals of the headline metrics. With fewer than ``min_artifacts`` artifacts or
    clean patches (the audit set uses :data:`MIN_AUDIT_ARTIFACTS`) nothing is measured: every
    metric is ``None`` and ``not_measured`` says why; the counts and confusion stay."""
    t = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pred = s >= threshold
    cm = confusion(t, pred)
    (_tn, fp), (fn, tp) = cm
    counts: dict[str, Any] = {
        "n": int(t.size),
        "positives": int(t.sum()),
        "negatives": int((~t).sum()),
        "threshold": float(threshold),
        "confusion": cm,
    }
    reason = not_measured_reason(int(t.sum()), int((~t).sum()), minimum=max(min_artifacts, 1))
    if reason is not None:
        blank = ("accuracy", "precision", "recall", "f1", "pr_auc", "roc_auc")
        return {
            **counts,
            **dict.fromkeys(blank, None),
            "precision_at_recall_0.9": None,
            "not_measured": reason,
            "pr_curve": None,
            "intervals": dict.fromkeys(METRIC_NAMES, None),
        }
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    prec_curve, rec_curve, _ = pr_curve(t, s)
    step = max(1, prec_curve.size // 50)  # at most ~50 points for a chart
    return {
        **counts,
        "accuracy": float((pred == t).mean()) if t.size else float("nan"),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "pr_auc": _finite(average_precision(t, s)),
        "roc_auc": _finite(roc_auc(t, s)),
        "precision_at_recall_0.9": _finite(precision_at_recall(t, s, 0.9)),
        "not_measured": None,
        "pr_curve": {
            "recall": [round(float(v), 4) for v in rec_curve[::step]],
            "precision": [round(float(v), 4) for v in prec_curve[::step]],
        },
        "intervals": bootstrap_intervals(t, s, threshold=threshold),
    }


def _finite(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)
