"""`artifact-loop simulate --annotators a:0,b:0,c:0.2`: simulated annotators with error rates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from models.label_errors import SUSPECT_AT
from server.cli.main import app
from server.errors import InvalidInput
from server.sim.crowd import RANKED_AFTER, Crowd, SimulatedAnnotator, parse_annotators
from server.sim.synth import make_synthetic_dataset


def test_annotator_specs_are_read_strictly() -> None:
    assert parse_annotators("a:0, b:0 ,c:0.2", reserved="truth") == (
        SimulatedAnnotator("a", 0.0),
        SimulatedAnnotator("b", 0.0),
        SimulatedAnnotator("c", 0.2),
    )
    assert parse_annotators("solo", reserved="truth") == (SimulatedAnnotator("solo", 0.0),)
    for spec, message in [
        ("a:1.5", "not within 0 and 1"),
        ("a:x", "not a number"),
        ("a:0,a:0.1", "repeat"),
        ("truth:0", "taken by the audit set's oracle"),
        ("a b:0", "use 1-40 letters"),
        (",", "names no annotator"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            parse_annotators(spec, reserved="truth")


def test_the_crowd_never_asks_the_same_person_twice_and_flips_at_its_rate() -> None:
    crowd = Crowd((SimulatedAnnotator("a", 0.0), SimulatedAnnotator("c", 0.3)), seed=4)
    flips = 0
    for index in range(2000):
        who = crowd.choose(index)
        assert who is not None
        said, flipped = crowd.verdict(who, truth=index % 7 == 0)
        assert said == ((index % 7 == 0) != flipped)
        assert not flipped or who.name == "c", "an annotator with rate 0 never errs"
        flips += flipped
        crowd.record(who, index, label_id=index, flip=flipped)
    assert crowd.given == {"a": 1000, "c": 1000}, "the least busy annotator labels next"
    assert 250 <= flips <= 350 and len(crowd.flipped) == flips
    second = crowd.choose(0)
    assert second is not None and second.name not in crowd.seen[0]
    crowd.record(second, 0, label_id=99999, flip=False)
    assert crowd.choose(0) is None, "both have labelled patch 0"


def test_the_ranking_waits_for_the_noisiest_annotators_first_labels() -> None:
    crowd = Crowd((SimulatedAnnotator("a", 0.0), SimulatedAnnotator("c", 0.2)), seed=1)
    assert crowd.ranking_shortfall() == RANKED_AFTER
    for index in range(2 * RANKED_AFTER - 6):
        who = crowd.choose(index)
        assert who is not None
        crowd.record(who, index, label_id=index, flip=False)
        crowd.observe({"a": 0.9, "c": 0.7}, labels=index + 1)
    assert crowd.ranking_at is None and crowd.ranking_shortfall() == 3
    for index in range(2 * RANKED_AFTER - 6, 2 * RANKED_AFTER):
        who = crowd.choose(index)
        assert who is not None
        crowd.record(who, index, label_id=index, flip=False)
    crowd.observe({"a": 0.9, "c": 0.7}, labels=2 * RANKED_AFTER)
    assert crowd.ranking_at is not None and crowd.ranking_at["annotator_labels"] == RANKED_AFTER
    assert crowd.ranking_at["lowest"] and crowd.ranking_shortfall() == 0
    even = Crowd((SimulatedAnnotator("a", 0.1), SimulatedAnnotator("b", 0.1)), seed=1)
    assert even.ranking_shortfall() == 0, "nobody is noisier: no ranking to wait for"


def test_bad_annotators_and_aggregation_stop_the_command(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "ground_truth.csv").write_text("x,y,z,label\n0,0,0,artifact\n")
    bad = runner.invoke(app, ["simulate", str(tmp_path), "--quick", "--annotators", "a:2"])
    assert bad.exit_code == 1 and "not within 0 and 1" in bad.output
    agg = runner.invoke(
        app, ["simulate", str(tmp_path), "--quick", "--label-aggregation", "median"]
    )
    assert agg.exit_code == 1 and "use consensus or latest" in agg.output


def test_a_quick_simulation_with_three_annotators(tmp_path: Path) -> None:
    data_dir = tmp_path / "ds"
    make_synthetic_dataset(data_dir, seed=2, shape=(840, 10), artifact_rate=3.0)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "simulate", str(data_dir), "--quick", "--strategy", "random", "--out", str(out),
            "--annotators", "a:0,b:0,c:0.5",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["annotators"] == [["a", 0.0], ["b", 0.0], ["c", 0.5]]
    rows = data["strategies"]["random"]["per_seed"][0]
    last = rows[-1]
    given = {name: a["labels"] for name, a in last["annotators"].items()}
    assert sum(given.values()) == last["labels"] == 60
    assert max(given.values()) - min(given.values()) <= 1, "the work is shared evenly"
    assert 0 < last["flipped"] < given["c"], "c errs on about half of their labels, a and b never"
    assert last["annotators"]["c"]["error_rate"] == 0.5
    assert "random/0" in data["reliability_ranking"]
    # every round says how much of the flipped labels the current suspect list recovers
    for row in rows:
        errors = row["label_errors"]
        assert set(errors) == {"recall", "precision", "suspects", "flipped"}
        assert errors["flipped"] == row["flipped"]
        for share in ("recall", "precision"):
            assert errors[share] is None or 0.0 <= errors[share] <= 1.0
        assert (errors["precision"] is None) == (errors["suspects"] == 0)
    assert any(row["label_errors"]["suspects"] for row in rows), "trainings found suspects"
    # every checked label's P(wrong), whatever the threshold: the suspect list is its top
    for row in rows:
        scores = row["label_scores"]
        assert all(0.0 <= wrong <= 1.0 for wrong, _ in scores)
        above = [flipped for wrong, flipped in scores if wrong >= SUSPECT_AT]
        assert len(above) == row["label_errors"]["suspects"]
        if row["flipped"]:
            assert sum(above) == round(row["label_errors"]["recall"] * row["flipped"])
        assert sum(flipped for _, flipped in scores) <= row["flipped"]
