"""Merging the strategies of several simulate runs on the same dataset."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("merge", ROOT / "bench/merge_simulations.py")
assert spec is not None and spec.loader is not None
merge_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(merge_module)


def _run(strategies: list[str], *, candidates: int = 3000, pool: int = 100) -> dict[str, Any]:
    return {
        "config": {"strategies": strategies, "budget": 50, "candidates": candidates},
        "workers": 2,
        "pool": pool,
        "test": 20,
        "test_positives": 3,
        "seconds": 10.0,
        "strategies": {s: {"curve": {"labels": [25, 50]}, "per_seed": []} for s in strategies},
        "jobs": {f"{s}/0": [1, 2] for s in strategies},
    }


def test_strategies_of_two_runs_join_and_the_later_run_wins() -> None:
    a, b = _run(["random", "hybrid"]), _run(["hybrid"])
    b["strategies"]["hybrid"]["marker"] = "b"
    merged = merge_module.merge([("a", a), ("b", b)])
    assert merged["config"]["strategies"] == ["random", "hybrid"]
    assert merged["strategies"]["hybrid"]["marker"] == "b"
    assert merged["sources"] == {"random": "a", "hybrid": "b"}
    assert set(merged["jobs"]) == {"random/0", "hybrid/0"}
    assert merged["seconds"] == {"a": 10.0, "b": 10.0}


@pytest.mark.parametrize(
    ("other", "message"),
    [(_run(["hybrid"], candidates=0), "candidates"), (_run(["hybrid"], pool=90), "pool")],
)
def test_runs_on_other_data_or_settings_are_refused(other: dict[str, Any], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        merge_module.merge([("a", _run(["random"])), ("b", other)])
