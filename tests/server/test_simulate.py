"""`artifact-loop simulate --quick` on a tiny synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from server.cli.main import app
from server.labels.truth import load_truth
from server.sim.simulate import SimulationConfig
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


def _rewrite_labels(src: Path, dst: Path, mapping: dict[str, str]) -> None:
    """A copy of the dataset whose ground_truth.csv spells ``label`` another way."""
    import csv
    import shutil

    shutil.copytree(src, dst)
    with (src / "ground_truth.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    with (dst / "ground_truth.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "label": mapping[row["label"]]})


def test_one_zero_labels_give_the_same_simulation(tiny: Path, tmp_path: Path) -> None:
    """1/0 (the most common spelling) is read as artifact/clean, not as all clean."""
    ones = tmp_path / "ones"
    _rewrite_labels(tiny, ones, {"artifact": "1", "clean": "0"})
    results = {}
    for name, dataset in (("words", tiny), ("ones", ones)):
        out = tmp_path / f"out-{name}"
        result = CliRunner().invoke(
            app,
            ["simulate", str(dataset), "--quick", "--strategy", "random", "--out", str(out)],
        )
        assert result.exit_code == 0, result.output
        results[name] = json.loads((out / "results.json").read_text())
    words, ones_ = (results[k]["strategies"]["random"] for k in ("words", "ones"))
    assert words["final_pr_auc"] > 0, "the tiny dataset has artifacts the model finds"
    assert ones_["curve"] == words["curve"]
    assert ones_["final_f1"] == words["final_f1"]
    assert ones_["final_pr_auc"] == words["final_pr_auc"]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"artifact": "clean", "clean": "clean"}, "no artifact (artifact, 1 or true)"),
        ({"artifact": "yes", "clean": "no"}, "neither artifact/clean, 1/0 nor true/false"),
    ],
)
def test_ground_truth_without_positives_or_with_unknown_labels_stops(
    tiny: Path, tmp_path: Path, labels: dict[str, str], message: str
) -> None:
    bad = tmp_path / "bad"
    _rewrite_labels(tiny, bad, labels)
    result = CliRunner().invoke(app, ["simulate", str(bad), "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert message in result.output and "column 'label'" in result.output
    for value in set(labels.values()):
        assert repr(value) in result.output, "the values found are named"
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_ground_truth_accepts_true_false_in_any_case(tmp_path: Path) -> None:
    (tmp_path / "ground_truth.csv").write_text("x,y,z,label\n0,0,0,TRUE\n1,0,0,False\n2,0,0, 1\n")
    _, labels = load_truth(tmp_path)
    assert labels.tolist() == [True, False, True]


def test_fresh_seeds_follow_the_first_seed() -> None:
    """A choice made on seeds 0-4 is confirmed on 5-9: the seeds a run uses."""
    assert list(SimulationConfig(seeds=3, first_seed=5).seed_numbers) == [5, 6, 7]
    assert list(SimulationConfig(seeds=2).seed_numbers) == [0, 1]


def test_a_budget_beyond_the_pool_labels_all_of_it_and_stops(tiny: Path, tmp_path: Path) -> None:
    """Once every pool patch is labelled, scoring finds no candidates left: the version is
    scored with none and proposes nothing (no failed job), and the loop stops there."""
    from dataclasses import replace

    from server.sim.simulate import quick_config, run_simulation

    config = replace(quick_config(("hybrid",)), budget=1000, batch=150, workers=1)
    data = run_simulation(tiny, out_dir=tmp_path / "out", config=config)  # raises on a failed job
    labels = data["strategies"]["hybrid"]["curve"]["labels"]
    assert labels[-1] >= data["pool"] == 288 and labels[-1] < 1000
