"""The acquisition registry: every strategy complete, every spelling of a strategy's name
derived from it, and a new strategy is one module plus one registry row."""

from __future__ import annotations

import ast
import inspect
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.acquisition import registry
from server.acquisition.base import Strategy
from server.errors import InvalidInput
from server.jobs.params import ProposeParams, ScoreParams
from server.settings import Settings
from server.sim.simulate import SimulationConfig, quick_config, run_simulation
from server.sim.synth import make_synthetic_dataset
from tests.server.acquisition import toy_strategy

ROOT = Path(__file__).resolve().parents[3]
NAMES = set(registry.names())


@pytest.mark.parametrize("name", sorted(NAMES))
def test_every_strategy_has_every_piece(name: str) -> None:
    strategy = registry.REGISTRY[name]
    cls = type(strategy)
    assert isinstance(strategy, Strategy) and strategy.name == name
    assert cls.__module__.startswith("server.acquisition."), "its own module in the package"
    assert strategy.summary.strip(), "a line for the docs table"
    assert cls.choose is not Strategy.choose, "it says how it chooses a batch"
    assert isinstance(strategy.needs_scores, bool)
    module = sys.modules[cls.__module__]
    assert ast.get_docstring(ast.parse(inspect.getsource(module))), "its module says what it is"


def test_settings_and_job_parameters_take_their_choices_from_the_registry() -> None:
    assert {registry.DEFAULT, registry.RANDOM} <= NAMES
    assert set(Settings.model_json_schema()["properties"]["acquisition"]["enum"]) == NAMES
    for params in (ProposeParams, ScoreParams):
        schema = json.dumps(params.model_json_schema()["properties"]["strategy"])
        assert all(f'"{n}"' in schema for n in NAMES), params
    with pytest.raises(ValidationError, match="choose one of"):
        Settings(acquisition="magic")
    with pytest.raises(InvalidInput, match="unknown acquisition strategy 'magic'"):
        ProposeParams.of({"strategy": "magic"})
    with pytest.raises(InvalidInput, match="choose one of"):
        registry.get("magic")


def test_the_cli_simulate_and_benchmarks_name_the_registry_strategies() -> None:
    from typer.testing import CliRunner

    from server.cli.main import app

    assert set(SimulationConfig().strategies) == NAMES
    help_text = CliRunner().invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"}).output
    assert all(n in help_text for n in NAMES)
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import real_tissue  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert set(real_tissue.STRATEGIES) >= NAMES


def test_the_readme_shows_the_registry_table() -> None:
    readme = (ROOT / "README.md").read_text()
    assert registry.docs_table() in readme, "regenerate with: python -m server.acquisition"
    row = next(ln for ln in readme.splitlines() if ln.startswith("| `ARTIFACT_LOOP_ACQUISITION`"))
    assert set(re.findall(r"`([a-z-]+)`", row.split("|")[3])) == NAMES


def test_no_list_of_strategy_names_is_spelled_outside_the_registry() -> None:
    """A tuple, list, set or Literal of two or more strategy names written out by hand is a
    second registry that will drift; derive it from ``server.acquisition.registry``."""
    found = []
    for path in [*ROOT.glob("server/**/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("worker/*.py")]:
        if path.is_relative_to(ROOT / "server" / "acquisition"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            items = (
                node.elts
                if isinstance(node, ast.Tuple | ast.List | ast.Set)
                else node.slice.elts
                if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Tuple)
                else []
            )
            named = {i.value for i in items if isinstance(i, ast.Constant)} & NAMES
            if len(named) >= 2:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


@pytest.mark.slow
def test_a_new_strategy_is_one_module_and_one_row_and_runs_through_simulate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toy = toy_strategy.MostLikelyArtifact()
    monkeypatch.setitem(registry.REGISTRY, toy.name, toy)  # the registry row
    toy_strategy.CALLS.clear()
    dataset = tmp_path / "ds"
    make_synthetic_dataset(dataset, seed=2, shape=(840, 10), artifact_rate=3.0)
    config = replace(quick_config((toy.name,)), workers=1)  # in this process: the row counts
    results = run_simulation(dataset, out_dir=tmp_path / "out", config=config, device="cpu")
    curve = results["strategies"][toy.name]["curve"]
    assert curve["labels"] == [20, 40, 60]
    jobs = results["jobs"][f"{toy.name}/0"]
    assert jobs["score"] >= 3, "it needs scores: the loop scored candidates for it"
    assert toy_strategy.CALLS and set(toy_strategy.CALLS) == {config.batch}, "its choose ran"
