"""Baselines of the benchmark: hand-made patch statistics and a logistic regression, with
random or uncertainty sampling, on the same patches, splits and budgets as the product.

They answer one question the learning curves alone cannot: is the autoencoder-initialised
network worth it, or would a few image statistics a person could write in an afternoon find
the same artifacts with the same labels?
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, optimize, special

from models.metrics import classification_report

BASELINES = ("features-random", "features-uncertainty")
# the hard benchmark's further baselines: the frozen autoencoder's embedding in place of the
# hand features, and the fully-labelled ceilings (every pool patch labelled, one fit)
MORE_BASELINES = (
    "embedding-random", "embedding-uncertainty", "features-all-logistic", "features-all-gbm",
)  # fmt: skip
ALL_BASELINES = BASELINES + MORE_BASELINES
FEATURE_NAMES = (
    "mean", "std", "skewness", "kurtosis", "p1", "p5", "p50", "p95", "p99",
    "gradient_mean", "gradient_std", "flat_fraction", "laplacian_var",
    "fft_band1", "fft_band2", "fft_band3", "fft_band4",
    "block_mean_std", "block_mean_range", "block_std_std", "extreme_fraction",
)  # fmt: skip
_BLOCKS = 4  # blocks per side for the local-statistics features


def patch_features(patches: np.ndarray) -> np.ndarray:
    """:data:`FEATURE_NAMES` of normalised patches ``(n, 1, h, w)`` or ``(n, h, w)``:
    intensity statistics, edges and flatness (missing tiles, defocus), the power spectrum in
    four radial bands (blur, stripes), and how much brightness and contrast vary across the
    patch (charging, badly exposed fields)."""
    x = np.asarray(patches, dtype=np.float32)
    if x.ndim == 4:
        x = x[:, 0]
    n, h, w = x.shape
    flat = x.reshape(n, -1)
    mean = flat.mean(1)
    std = flat.std(1) + 1e-6
    z = (flat - mean[:, None]) / std[:, None]
    pct = np.percentile(flat, (1, 5, 50, 95, 99), axis=1).T
    # filters along the two image axes only: never across patches of the batch
    derivative, smooth = np.array([-1.0, 0.0, 1.0]), np.array([1.0, 2.0, 1.0])
    gy = ndimage.correlate1d(ndimage.correlate1d(x, derivative, 1, mode="nearest"), smooth, 2)
    gx = ndimage.correlate1d(ndimage.correlate1d(x, derivative, 2, mode="nearest"), smooth, 1)
    grad = np.hypot(gx, gy).reshape(n, -1)
    second = np.array([1.0, -2.0, 1.0])
    lap = ndimage.correlate1d(x, second, 1, mode="nearest") + ndimage.correlate1d(
        x, second, 2, mode="nearest"
    )
    lap = lap.reshape(n, -1)
    power = np.abs(np.fft.rfft2(x - mean[:, None, None])) ** 2
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    edges = (0.0, 0.05, 0.12, 0.25, 0.75)
    total = power.reshape(n, -1).sum(1) + 1e-6
    bands = [
        np.log((power[:, (radius >= lo) & (radius < hi)].sum(1) + 1e-6) / total)
        for lo, hi in itertools.pairwise(edges)
    ]
    bh, bw = h // _BLOCKS, w // _BLOCKS
    blocks = x[:, : bh * _BLOCKS, : bw * _BLOCKS].reshape(n, _BLOCKS, bh, _BLOCKS, bw)
    block_mean = blocks.mean(axis=(2, 4)).reshape(n, -1)
    block_std = blocks.std(axis=(2, 4)).reshape(n, -1)
    lo, hi = pct[:, 0], pct[:, 4]
    extreme = ((flat <= lo[:, None] + 0.05) | (flat >= hi[:, None] - 0.05)).mean(1)
    columns = [
        mean, std, (z**3).mean(1), (z**4).mean(1), *pct.T,
        grad.mean(1), grad.std(1), (grad < 0.1).mean(1), lap.var(1),
        *bands,
        block_mean.std(1), np.ptp(block_mean, axis=1), block_std.std(1), extreme,
    ]  # fmt: skip
    return np.stack(columns, axis=1).astype(np.float64)


class LogisticModel:
    """L2-regularised logistic regression on standardised features, classes weighted equally
    (artifacts are rare), fitted with L-BFGS."""

    def __init__(self, *, l2: float = 1.0) -> None:
        self.l2 = l2
        self.center = np.zeros(0)
        self.scale = np.ones(0)
        self.coef = np.zeros(0)

    def fit(self, features: np.ndarray, y: np.ndarray) -> LogisticModel:
        y = np.asarray(y, dtype=np.float64)
        self.center = features.mean(0)
        # a statistic nearly constant over a few labels must not blow up on other patches
        self.scale = np.maximum(features.std(0), 1e-3 * (np.abs(self.center) + 1.0))
        xs = np.hstack([(features - self.center) / self.scale, np.ones((len(y), 1))])
        pos = max(y.sum(), 1.0)
        neg = max(len(y) - y.sum(), 1.0)
        weight = np.where(y > 0, len(y) / (2 * pos), len(y) / (2 * neg))

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            m = xs @ w
            nll = weight * (np.logaddexp(0, m) - y * m)
            grad_m = weight * (special.expit(m) - y)
            penalty = 0.5 * self.l2 * float(w[:-1] @ w[:-1])
            g = xs.T @ grad_m
            g[:-1] += self.l2 * w[:-1]
            return float(nll.sum()) + penalty, g

        fit = optimize.minimize(loss, np.zeros(xs.shape[1]), jac=True, method="L-BFGS-B")
        self.coef = fit.x
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        xs = (features - self.center) / self.scale
        return np.asarray(special.expit(xs @ self.coef[:-1] + self.coef[-1]))


def run_baseline_curve(
    features: np.ndarray,
    truth: np.ndarray,
    *,
    pool: np.ndarray,
    test: np.ndarray,
    strategy: str,
    seed: int,
    budget: int,
    batch: int,
    say: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One curve: rounds of ``batch`` labels from ``pool`` (row indices into ``features``)
    until ``budget``, scored on ``test`` after each; the rows carry the product's metrics."""
    if strategy not in ALL_BASELINES:
        raise ValueError(f"unknown baseline {strategy!r}")
    rng = np.random.default_rng([seed, 11])
    truth = np.asarray(truth, dtype=bool)
    labelled = np.zeros(len(features), dtype=bool)
    prevalence = float(truth[test].mean()) if len(test) else 0.0
    model: LogisticModel | None = None
    curve: list[dict[str, Any]] = []
    if strategy.startswith("features-all-"):
        return [
            _fully_labelled(features, truth, pool=pool, test=test, gbm=strategy.endswith("gbm"))
        ]
    while labelled[pool].sum() < budget:
        unlabelled = pool[~labelled[pool]]
        if len(unlabelled) == 0:
            break
        take = min(batch, budget - int(labelled[pool].sum()), len(unlabelled))
        if strategy.endswith("-uncertainty") and model is not None:
            p = model.predict(features[unlabelled])
            picks = unlabelled[np.argsort(np.abs(p - 0.5), kind="stable")[:take]]
        else:
            picks = rng.choice(unlabelled, size=take, replace=False)
        labelled[picks] = True
        train = pool[labelled[pool]]
        if truth[train].all() or not truth[train].any():
            model = None
            row: dict[str, Any] = {"f1": 0.0, "pr_auc": prevalence, "precision_at_recall_0.9": 0.0}
        else:
            model = LogisticModel().fit(features[train], truth[train])
            report = classification_report(
                truth[test], model.predict(features[test]), threshold=0.5
            )
            row = {k: report.get(k) for k in ("f1", "pr_auc", "precision_at_recall_0.9")}
            row["pr_auc_interval"] = (report.get("intervals") or {}).get("pr_auc")
            row["test_scores"] = _rounded(model.predict(features[test]))
            row["threshold"] = 0.5
        row.update(
            round=len(curve) + 1,
            labels=int(labelled[pool].sum()),
            positives_found=int(truth[train].sum()),
        )
        curve.append(row)
        if say is not None:
            say(f"seed {seed} {strategy}: {row['labels']} labels, test F1 {row['f1'] or 0:.2f}")
    return curve


def _rounded(p: np.ndarray) -> list[float]:
    return [round(float(v), 5) for v in p]


def _fully_labelled(
    features: np.ndarray, truth: np.ndarray, *, pool: np.ndarray, test: np.ndarray, gbm: bool
) -> dict[str, Any]:
    """Every pool patch labelled, one fit: a logistic regression or gradient boosting."""
    if gbm:
        # scikit-learn is a development extra: only the hard benchmark's ceiling needs it
        from sklearn.ensemble import HistGradientBoostingClassifier

        booster = HistGradientBoostingClassifier(class_weight="balanced", random_state=0)
        p = booster.fit(features[pool], truth[pool]).predict_proba(features[test])[:, 1]
    else:
        p = LogisticModel().fit(features[pool], truth[pool]).predict(features[test])
    report = classification_report(truth[test], p, threshold=0.5)
    row = {k: report.get(k) for k in ("f1", "pr_auc", "precision_at_recall_0.9")}
    row.update(
        pr_auc_interval=(report.get("intervals") or {}).get("pr_auc"), test_scores=_rounded(p),
        threshold=0.5, round=1, labels=len(pool), positives_found=int(truth[pool].sum()),
    )  # fmt: skip
    return row


def ae_embeddings(settings: Any, rt: Any, dataset_id: int, index: np.ndarray) -> np.ndarray:
    """The autoencoder's embedding of grid ``index`` patches, from its stored features."""
    from sqlalchemy import select

    from server.db.tables import ModelVersion
    from server.versions.features import AEFeatures, features_dir

    with rt.sessions() as session:
        ae = session.scalar(select(ModelVersion).where(ModelVersion.kind == "ae"))
        assert ae is not None
        folder = features_dir(settings, dataset_id=dataset_id, version_id=ae.id)
    return np.asarray(AEFeatures(folder).take(index)[1], dtype=np.float32)


def baseline_curves(
    features_file: Path, *, names: list[str], seeds: Iterable[int], budget: int, batch: int
) -> Iterator[tuple[int, str, list[dict[str, Any]]]]:
    """``(seed, name, curve)`` of every baseline and seed, from the features, ground truth
    and test mask ``simulate`` saved: same pool, test sections, budget and batches as the
    product's curves."""
    data = np.load(features_file)
    test = data["test"]
    pool, held_out = np.flatnonzero(~test), np.flatnonzero(test)
    for seed in seeds:
        for name in names:
            matrix = data["embedding"] if name.startswith("embedding-") else data["features"]
            curve = run_baseline_curve(
                matrix, data["truth"], pool=pool, test=held_out, strategy=name,
                seed=seed, budget=budget, batch=batch,
            )  # fmt: skip
            yield seed, name, curve
