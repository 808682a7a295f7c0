"""`artifact-loop simulate --quick` on a tiny synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from server.cli.main import app
from server.labels.truth import load_truth
from server.sim.synth import make_synthetic_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "ds"
    make_synthetic_dataset(path, seed=2, shape=(840, 10), artifact_rate=3.0)
    return path


def test_quick_simulation_writes_results_and_plot(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["simulate", str(tiny), "--quick", "--strategy", "random,hybrid", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "hybrid" in result.output and "labels to F1 0.8" in result.output
    data = json.loads((out / "results.json").read_text())
    assert set(data["strategies"]) == {"random", "hybrid"}
    for s in data["strategies"].values():
        assert set(s["labels_to_f1"]) == {"0.8", "0.9"}
        assert 0 <= s["final_pr_auc"] <= 1
        assert s["curve"]["labels"] == [20, 40, 60]
    assert data["test"] == 6 * 6 * 2, "whole sections held out: every 5th of 10"
    assert (out / "learning_curves.png").stat().st_size > 10_000
    # the curves ran through the service's own job kinds and steps, not a copy of them
    hybrid, random = data["jobs"]["hybrid/0"], data["jobs"]["random/0"]
    assert hybrid["pretrain"] == 1 and hybrid["train"] >= 2 and hybrid["propose"] >= 3
    assert hybrid["score_chunk"] >= hybrid["score"] >= 3, "autoencoder features + candidates"
    assert random["train"] >= 2 and random["score"] == 1, "random needs no classifier scores"


def test_unknown_strategy_and_missing_ground_truth(tiny: Path, tmp_path: Path) -> None:
    bad = CliRunner().invoke(app, ["simulate", str(tiny), "--quick", "--strategy", "magic"])
    assert bad.exit_code == 1 and "unknown strategies magic" in bad.output
    none = CliRunner().invoke(app, ["simulate", str(tmp_path), "--quick"])
    assert none.exit_code == 1 and "ground_truth.csv" in none.output


def test_ground_truth_columns_are_read_by_name(tmp_path: Path) -> None:
    (tmp_path / "ground_truth.csv").write_text(
        "type,label,extra,z,y,x\n,clean,1,3,2,1\ndebris,artifact,0,4,5,6\n"
    )
    origins, labels = load_truth(tmp_path)
    assert origins.tolist() == [[1, 2, 3], [6, 5, 4]] and labels.tolist() == [False, True]
