"""bench/label_error_views.py: the label check replayed on the stores a simulate run kept."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from server.acquisition import registry
from server.sim.crowd import SWEEP, parse_annotators
from server.sim.replay import ORACLE
from server.sim.simulate import quick_config, run_simulation
from server.sim.synth import make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("views", ROOT / "bench/label_error_views.py")
assert spec is not None and spec.loader is not None
views = importlib.util.module_from_spec(spec)
spec.loader.exec_module(views)


@pytest.mark.slow
def test_the_label_check_replays_on_the_kept_stores(tmp_path: Path) -> None:
    dataset = tmp_path / "ds"
    make_synthetic_dataset(dataset, seed=2, shape=(840, 10), artifact_rate=3.0)
    config = replace(
        quick_config((registry.DEFAULT,)),
        annotators=parse_annotators("a:0,b:0,c:0.5", reserved=ORACLE),
        keep_work=True,
        workers=1,
    )
    out = tmp_path / "out"
    results = run_simulation(dataset, out_dir=out, config=config, device="cpu")
    work = out / ".work"
    store = work / f"{registry.DEFAULT}-0"
    assert (store / "loop.sqlite").is_file(), "the curve's store is kept"
    truth = {int(i): bool(t) for i, t in np.load(work / "template" / "verdicts.npy")}
    curve = views.curve_scores(store, truth)
    last = results["strategies"][registry.DEFAULT]["per_seed"][0][-1]
    assert curve["labels"] == last["labels"]
    assert curve["flipped"] == last["flipped"] > 0, "the ground truth tells the same flips"
    scores = curve["scores"]
    assert set(scores) == {
        "features + own logit",
        "ae + features",
        "ae + features, penalty chosen",
        "features, penalty chosen",
        "ae",
        "features",
        "asked",
        "features + asked",
        "in-sample",
    }
    assert len({len(v) for v in scores.values()}) == 1, "every view checks the same labels"
    for scored in scores.values():
        # a position whose labels tie is left out of training, and so of the check
        assert 0 < sum(flipped for _, flipped in scored) <= curve["flipped"]
        assert all(0.0 <= wrong <= 1.0 for wrong, _ in scored)
    summary = views.summarise({"0": curve})
    assert summary["features + asked"]["average_precision_per_seed"][0] is not None
    assert [r["suspect_at"] for r in summary["features"]["thresholds"]] == list(SWEEP)
