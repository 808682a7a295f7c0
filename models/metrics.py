"""Classification metrics on a held-out set with the real prevalence (NumPy only)."""

from __future__ import annotations

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


def bootstrap_intervals(
    y_true: np.ndarray,
    scores: np.ndarray,
    *,
    threshold: float = 0.5,
    resamples: int = 500,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals of F1, PR-AUC and precision at recall 0.9.

    Resampling is stratified (positives and negatives drawn separately), so every resample
    keeps the set's prevalence and has artifacts to rank; with no positive or no negative
    there is nothing to resample and every interval is ``None``.
    """
    t = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = np.flatnonzero(t), np.flatnonzero(~t)
    names = ("f1", "pr_auc", "precision_at_recall_0.9")
    if pos.size == 0 or neg.size == 0:
        return dict.fromkeys(names, None)
    rng = np.random.default_rng(seed)
    idx = np.concatenate(
        [
            pos[rng.integers(0, pos.size, size=(resamples, pos.size))],
            neg[rng.integers(0, neg.size, size=(resamples, neg.size))],
        ],
        axis=1,
    )
    truth, score = t[idx], s[idx]
    pred = score >= threshold
    tp = (pred & truth).sum(axis=1)
    fp = (pred & ~truth).sum(axis=1)
    fn = (~pred & truth).sum(axis=1)
    f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    # ranking metrics of all resamples at once: sort each row by score, highest first (ties
    # in any order; probabilities in float64 rarely tie)
    order = np.argsort(-score, axis=1)
    hits = np.take_along_axis(truth, order, axis=1)
    tp_at = np.cumsum(hits, axis=1)
    precision_at = tp_at / np.arange(1, hits.shape[1] + 1)
    pr_auc = (precision_at * hits).sum(axis=1) / pos.size  # average precision
    reached = tp_at >= 0.9 * pos.size - 1e-9
    p90 = np.where(reached, precision_at, 0.0).max(axis=1)
    tail = (1 - level) / 2 * 100
    out: dict[str, list[float] | None] = {}
    for name, values in zip(names, (f1, pr_auc, p90), strict=True):
        lo, hi = np.percentile(values, [tail, 100 - tail])
        out[name] = [round(float(lo), 4), round(float(hi), 4)]
    return out


def classification_report(
    y_true: np.ndarray, scores: np.ndarray, *, threshold: float = 0.5
) -> dict[str, Any]:
    """Everything the dashboard and the benchmark report, JSON-ready; ``intervals`` holds
    bootstrap 95% intervals of the headline metrics."""
    t = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pred = s >= threshold
    cm = confusion(t, pred)
    (_tn, fp), (fn, tp) = cm
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    prec_curve, rec_curve, _ = pr_curve(t, s)
    step = max(1, prec_curve.size // 50)  # at most ~50 points for a chart
    return {
        "n": int(t.size),
        "positives": int(t.sum()),
        "negatives": int((~t).sum()),
        "threshold": float(threshold),
        "accuracy": float((pred == t).mean()) if t.size else float("nan"),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "pr_auc": _finite(average_precision(t, s)),
        "roc_auc": _finite(roc_auc(t, s)),
        "precision_at_recall_0.9": _finite(precision_at_recall(t, s, 0.9)),
        "confusion": cm,
        "pr_curve": {
            "recall": [round(float(v), 4) for v in rec_curve[::step]],
            "precision": [round(float(v), 4) for v in prec_curve[::step]],
        },
        "intervals": bootstrap_intervals(t, s, threshold=threshold),
    }


def _finite(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)
