"""Audit intervals: nothing below the minimum of artifacts, never a collapsed interval above."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics import (
    METRIC_NAMES,
    MIN_AUDIT_ARTIFACTS,
    bootstrap_intervals,
    classification_report,
    exact_interval,
    paired_difference,
)


def _audit_set(artifacts: int, clean: int = 200, *, perfect: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = np.r_[np.ones(artifacts, bool), np.zeros(clean, bool)]
    if perfect:  # every artifact above every clean patch: the case that collapsed before
        scores = np.r_[rng.uniform(0.8, 1.0, artifacts), rng.uniform(0.0, 0.2, clean)]
    else:
        scores = np.clip(truth * 0.35 + rng.uniform(0, 0.65, truth.size), 0, 1)
    return truth, scores


def test_exact_interval_matches_closed_forms() -> None:
    # all successes: lower end (alpha/2)^(1/n); none: upper end 1 - (alpha/2)^(1/n)
    for n in (1, 5, 20):
        assert exact_interval(n, n)[0] == pytest.approx(0.025 ** (1 / n), abs=1e-9)
        assert exact_interval(n, n)[1] == 1.0
        assert exact_interval(0, n)[1] == pytest.approx(1 - 0.025 ** (1 / n), abs=1e-9)
    # 3 of 10: the textbook Clopper-Pearson interval
    lo, hi = exact_interval(3, 10)
    assert lo == pytest.approx(0.0667, abs=1e-4) and hi == pytest.approx(0.6525, abs=1e-4)


@pytest.mark.parametrize("artifacts", [1, 2])
def test_below_the_minimum_nothing_is_measured(artifacts: int) -> None:
    assert artifacts < MIN_AUDIT_ARTIFACTS
    for perfect in (True, False):
        truth, scores = _audit_set(artifacts, perfect=perfect)
        report = classification_report(
            truth, scores, threshold=0.5, min_artifacts=MIN_AUDIT_ARTIFACTS
        )
        assert report["not_measured"] == f"not enough audit artifacts ({artifacts})"
        for name in (*METRIC_NAMES, "precision", "recall", "accuracy", "roc_auc"):
            assert report[name] is None, name
        assert all(v is None for v in report["intervals"].values())
        assert report["positives"] == artifacts and report["n"] == artifacts + 200
        paired = paired_difference(truth, scores, scores[::-1].copy())
        assert paired["reason"] == f"not enough audit artifacts ({artifacts})"
        assert paired["artifacts"] == artifacts and paired["f1"] is None


@pytest.mark.parametrize("artifacts", [5, 20])
@pytest.mark.parametrize("perfect", [True, False])
def test_above_the_minimum_intervals_never_collapse(artifacts: int, perfect: bool) -> None:
    truth, scores = _audit_set(artifacts, perfect=perfect)
    report = classification_report(truth, scores, threshold=0.5, min_artifacts=MIN_AUDIT_ARTIFACTS)
    assert report["not_measured"] is None
    for name in METRIC_NAMES:
        lo, hi = report["intervals"][name]
        assert lo <= report[name] <= hi, name
        assert hi - lo > 0.05, (name, lo, hi)
    if perfect:  # a perfect ranking on 5 artifacts proves little; on 20 somewhat more
        lo = report["intervals"]["pr_auc"][0]
        assert lo == pytest.approx(0.025 ** (1 / artifacts), abs=1e-3)


def test_intervals_narrow_as_artifacts_grow() -> None:
    widths = []
    for artifacts in (5, 20, 80):
        truth, scores = _audit_set(artifacts, clean=400, perfect=False, seed=3)
        interval = bootstrap_intervals(truth, scores, threshold=0.5)["pr_auc"]
        assert interval is not None
        widths.append(interval[1] - interval[0])
    assert widths[0] > widths[1] > widths[2]


@pytest.mark.parametrize("artifacts", [5, 20])
def test_paired_difference_on_the_same_patches(artifacts: int) -> None:
    truth, good = _audit_set(artifacts, perfect=True)
    rng = np.random.default_rng(1)
    noisy = np.clip(good + rng.normal(0, 0.45, good.size), 0, 1)
    out = paired_difference(truth, good, noisy, threshold=0.5, baseline_threshold=0.5)
    assert out["patches"] == artifacts + 200 and out["artifacts"] == artifacts
    for name in METRIC_NAMES:
        diff, (lo, hi) = out[name]["difference"], out[name]["interval"]
        assert lo <= diff <= hi and hi - lo > 0.0
    # against itself: difference 0, and still an interval with width (both perfect)
    same = paired_difference(truth, good, good)
    for name in METRIC_NAMES:
        assert same[name]["difference"] == 0.0
        lo, hi = same[name]["interval"]
        assert lo < 0 < hi
    # a clearly better ranking on 20 artifacts: the whole interval lies above zero
    if artifacts == 20:
        assert out["pr_auc"]["interval"][0] > 0


def test_pairing_narrows_the_interval_of_a_difference() -> None:
    truth, scores = _audit_set(20, perfect=False, seed=5)
    rng = np.random.default_rng(9)
    close = np.clip(scores + rng.normal(0, 0.02, scores.size), 0, 1)
    paired = paired_difference(truth, scores, close)["pr_auc"]["interval"]
    a = bootstrap_intervals(truth, scores)["pr_auc"]
    b = bootstrap_intervals(truth, close)["pr_auc"]
    assert a is not None and b is not None
    assert paired[1] - paired[0] < (a[1] - b[0]) - (a[0] - b[1])
