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
    assert "started pretrain job 1" in out
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
        "--no-pretrain",
    )
    assert code == 0, out
    assert "30 patches" in out  # 5 x 3 x 2
    assert "pretrain" not in out
    code, out = _run("dataset", "list")
    assert code == 0
    rows = {cells[1]: cells for cells in _table_rows(out)}
    assert rows["demo"][7] == "60" and rows["sub"][7] == "30", out
    assert _jobs() == [(1, "pretrain", "queued")], "registering starts pretraining, once"


def _table_rows(out: str) -> list[list[str]]:
    """The cells of each body row of a rich table."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in out.splitlines()
        if line.startswith("│")
    ]


def _jobs() -> list[tuple[int, str, str]]:
    from sqlalchemy import select

    from server.db.base import session_scope
    from server.db.tables import Job
    from server.runtime import Runtime

    rt = Runtime.start()
    try:
        with session_scope(rt.sessions) as session:
            return [(j.id, j.kind, j.state) for j in session.scalars(select(Job).order_by(Job.id))]
    finally:
        rt.close()


def test_job_commands_start_jobs_and_say_what_is_missing(
    env: dict[str, str], tmp_path: Path
) -> None:
    write_test_dataset(tmp_path / "ds", shape=(300, 300, 2))
    assert _run("db", "upgrade")[0] == 0
    code, out = _run("dataset", "add", "demo", str(tmp_path / "ds"), "--no-pretrain")
    assert code == 0 and _jobs() == [], out
    code, out = _run("train", "demo", "--no-wait")
    assert code == 1 and "run `artifact-loop pretrain demo` first" in out, out
    code, out = _run("pretrain", "demo", "--no-wait", "--epochs", "2")
    assert code == 0 and "started pretrain job 1 of dataset 'demo'" in out, out
    code, out = _run("pretrain", "demo", "--no-wait")
    assert code == 0 and "joined the waiting pretrain job 1" in out, out
    for command in ("train", "predict"):
        code, out = _run(command, "demo", "--no-wait")
        assert code == 1 and "pretrain job 1 is queued" in out, out
        assert len(out.strip().splitlines()) == 1, out
    code, out = _run("job", "1", "--no-wait")
    assert code == 0 and out.strip() == "pretrain job 1: queued", out
    assert _jobs() == [(1, "pretrain", "queued")]
    code, out = _run("train", "nope", "--no-wait")
    assert code == 1 and "nope" in out and len(out.strip().splitlines()) == 1, out


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "cannot parse database URL 'not a url'"),
        ("postgresql://u:secret@host:port/db", "cannot parse database URL '...@host:port/db'"),
        ("mysql://u@host/db", "unsupported database 'mysql'"),
    ],
)
def test_malformed_database_url_is_one_line(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, url: str, message: str
) -> None:
    monkeypatch.setenv("ARTIFACT_LOOP_DATABASE_URL", url)
    get_settings.cache_clear()
    for args in (["db", "upgrade"], ["dataset", "list"]):
        code, out = _run(*args)
        assert code == 1
        assert message in out and "ARTIFACT_LOOP_DATABASE_URL" in out, out
        assert "secret" not in out and "Traceback" not in out
        assert len(out.strip().splitlines()) == 1, out


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


@pytest.mark.slow  # a real process
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
    rows = _table_rows(proc.stdout)
    assert [(r[1], r[7]) for r in rows] == [("demo", "8")], proc.stdout  # 2 x 2 x 2 patches
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


def test_dataset_link_to_webknossos(env: dict[str, str], tmp_path: Path) -> None:
    from server.datasets.service import get_dataset
    from server.db.base import make_engine, make_sessionmaker, session_scope

    write_test_dataset(tmp_path / "ds", shape=(700, 420, 4))
    assert _run("db", "upgrade")[0] == 0
    assert _run("dataset", "add", "demo", str(tmp_path / "ds"), "--no-pretrain")[0] == 0
    wk_id = "6980c803d10000d7de2cc080"
    code, out = _run("dataset", "link", "demo", wk_id, "--push", "--instances", "2")
    assert code == 0, out
    assert f"linked dataset 'demo' to webKnossos dataset {wk_id}" in out
    engine = make_engine(env["ARTIFACT_LOOP_DATABASE_URL"])
    with session_scope(make_sessionmaker(engine)) as session:
        link = get_dataset(session, "demo").settings["webknossos"]
    engine.dispose()
    assert link == {"dataset_id": wk_id, "push": True, "instances": 2}
    code, out = _run("dataset", "link", "nope", wk_id)
    assert code == 1 and "no dataset 'nope'" in out and "Traceback" not in out


def test_train_output_says_not_measured_in_words() -> None:
    from server.cli.jobs import _audit_words

    few = {"n": 7, "positives": 0, "negatives": 7, "f1": 0.0, "pr_auc": None}
    assert _audit_words(few) == (
        ", audit: not enough audit artifacts (0) (7 audit patches, 0 artifacts)"
    )
    measured = {
        "n": 200, "positives": 20, "negatives": 180, "f1": 0.71, "pr_auc": 0.8,
        "not_measured": None, "intervals": {"f1": [0.55, 0.83], "pr_auc": [0.66, 0.91]},
    }  # fmt: skip
    assert _audit_words(measured) == (
        ", audit F1 0.71 [0.55-0.83], PR-AUC 0.80 [0.66-0.91] on 200 audit patches, 20 artifacts"
    )
