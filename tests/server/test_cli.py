"""The command line as a person uses it: clear output, one-line errors, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from server.cli.main import app
from server.settings import get_settings
from tests.conftest import write_test_dataset

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "ARTIFACT_LOOP_DATA_DIR": str(tmp_path / "data"),
        "ARTIFACT_LOOP_DATABASE_URL": db_url,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield values
    get_settings.cache_clear()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_register_and_list(env: dict[str, str], tmp_path: Path) -> None:
    write_test_dataset(tmp_path / "ds", shape=(700, 420, 4))
    code, out = _run("db", "upgrade")
    assert code == 0, out
    code, out = _run("dataset", "list")
    assert code == 0 and "no datasets yet" in out
    code, out = _run("dataset", "add", "demo", str(tmp_path / "ds"))
    assert code == 0, out
    assert "60 patches" in out  # 5 x 3 x 4
    code, out = _run(
        "dataset",
        "add",
        "sub",
        str(tmp_path / "ds"),
        "--patch",
        "100",
        "--stride",
        "50",
        "--bbox",
        "0,0,1,300,200,2",
    )
    assert code == 0, out
    assert "30 patches" in out  # 5 x 3 x 2
    code, out = _run("dataset", "list")
    assert code == 0
    assert "demo" in out and "sub" in out and "60" in out and "30" in out


BAD_INPUTS = [
    (["dataset", "add", "x", "{tmp}"], "not a webKnossos dataset"),
    (["dataset", "add", "x", "{tmp}/missing"], "not a webKnossos dataset"),
    (["dataset", "add", "x", "{tmp}/ds", "--layer", "nope"], "no layer 'nope'"),
    (["dataset", "add", "x", "{tmp}/ds", "--mag", "8-8-1"], "no mag 8-8-1"),
    (["dataset", "add", "x", "{tmp}/ds", "--patch", "500"], "does not fit"),
    (["dataset", "add", "x", "{tmp}/ds", "--bbox", "0,0,0,10"], "invalid bounding box"),
    (["dataset", "add", "demo", "{tmp}/ds"], "already exists"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_one_line_error(
    env: dict[str, str], tmp_path: Path, args: list[str], message: str
) -> None:
    write_test_dataset(tmp_path / "ds", shape=(300, 300, 2))
    assert _run("db", "upgrade")[0] == 0
    assert _run("dataset", "add", "demo", str(tmp_path / "ds"))[0] == 0
    code, out = _run(*[a.format(tmp=tmp_path) for a in args])
    assert code != 0
    assert message in out
    assert "Traceback" not in out
    assert len([line for line in out.splitlines() if line.strip()]) == 1, out


def test_console_script_end_to_end(tmp_path: Path, sqlite_url: str) -> None:
    """The installed entry point, in a real process, as the README tells a newcomer."""
    write_test_dataset(tmp_path / "ds", shape=(300, 300, 2))
    env = {
        **os.environ,
        "ARTIFACT_LOOP_DATA_DIR": str(tmp_path / "data"),
        "ARTIFACT_LOOP_DATABASE_URL": sqlite_url,
    }
    exe = [sys.executable, "-m", "server.cli.main"]
    for args in (
        ["db", "upgrade"],
        ["dataset", "add", "demo", str(tmp_path / "ds")],
        ["dataset", "list"],
    ):
        proc = subprocess.run(exe + args, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout and "4" in proc.stdout
    proc = subprocess.run(
        [*exe, "dataset", "add", "demo", str(tmp_path / "ds")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: a dataset named 'demo' already exists"


@pytest.mark.postgres
def test_server_database_must_be_upgraded(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARTIFACT_LOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ARTIFACT_LOOP_DATABASE_URL", pg_url)
    get_settings.cache_clear()
    try:
        code, out = _run("dataset", "list")
    finally:
        get_settings.cache_clear()
    assert code == 1
    assert "run `artifact-loop db upgrade`" in out and "Traceback" not in out
