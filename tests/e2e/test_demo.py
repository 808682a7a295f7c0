"""`artifact-loop demo` itself, in a real process: short rounds on a tiny synthetic dataset,
under competing load, and stopped by SIGTERM or SIGHUP without leaving a process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import psutil
import pytest

from server.sim.synth import make_synthetic_dataset
from tests.processes import free_port, service_env, wait_for

pytestmark = pytest.mark.slow

# small models and rounds: the demo's path end to end in a few minutes on two loaded cores
TINY = {
    "ARTIFACT_LOOP_PRETRAIN_PATCHES": "200",
    "ARTIFACT_LOOP_PRETRAIN_EPOCHS": "1",
    "ARTIFACT_LOOP_TRAIN_EPOCHS": "5",
    "ARTIFACT_LOOP_RETRAIN_EVERY": "20",
    "ARTIFACT_LOOP_BATCH_SIZE": "20",
    "ARTIFACT_LOOP_AUDIT_SIZE": "30",
    "ARTIFACT_LOOP_TTA": "1",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "ds"
    make_synthetic_dataset(path, seed=1, shape=(840, 10), artifact_rate=3.0)
    return path


def _env(data_dir: Path) -> dict[str, str]:
    env = service_env(ARTIFACT_LOOP_DATA_DIR=str(data_dir), **TINY)
    env.pop("ARTIFACT_LOOP_DATABASE_URL", None)
    env.pop("ARTIFACT_LOOP_BROKER_URL", None)
    return env


@pytest.fixture
def competing_load() -> Iterator[list[psutil.Process]]:
    """Two nice'd busy loops: both cores are taken whenever the demo does not need them."""
    busy = [
        subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while True: pass"])
        for _ in range(2)
    ]
    try:
        yield [psutil.Process(p.pid) for p in busy]
    finally:
        for p in busy:
            p.kill()
            p.wait(timeout=10)


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").exists() else "?"


def test_demo_runs_to_the_end_under_competing_load(
    tiny: Path, tmp_path: Path, competing_load: list[psutil.Process]
) -> None:
    data = tmp_path / "data"
    results_path = tmp_path / "results.json"
    command = [sys.executable, "-m", "server.cli.main", "demo", "--dataset", str(tiny)]
    command += ["--rounds", "2", "--exit", "--port", str(free_port())]
    command += ["--results", str(results_path)]
    load_before, started = _loadavg(), time.monotonic()
    proc = subprocess.run(
        command, env=_env(data), capture_output=True, text=True, timeout=1800, check=False
    )
    seconds = time.monotonic() - started
    print(f"demo: {seconds:.0f} s; /proc/loadavg before {load_before}, after {_loadavg()}")
    assert all(p.is_running() for p in competing_load), "the load ran the whole time"
    logs = {
        name: (data / f"demo-{name}.log").read_text(errors="replace") for name in ("api", "worker")
    }
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs["worker"][-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr

    results = json.loads(results_path.read_text())
    assert [r["trainings"] for r in results["log"]] == [1, 1], "one training per round"
    assert [r["labels"] for r in results["log"]] == [20, 20]
    classifiers = [v for v in results["versions"] if v["kind"] == "classifier"]
    assert [v["id"] for v in classifiers] == [r["model_version_id"] for r in results["log"]]
    assert classifiers[-1]["labels"] > classifiers[0]["labels"]
    assert results["prediction"]["model_version_id"] == classifiers[-1]["id"]
    assert 0 <= results["prediction"]["pr_auc"] <= 1
    assert results["server_errors"] == []
    # the printed table is the final state: its last row is the version the map came from
    rows = [line.split() for line in proc.stdout.splitlines() if re.match(r"\s*\d+\s+\w", line)]
    assert rows[-1][0] == str(classifiers[-1]["id"]) and rows[-1][-1] == "map", proc.stdout
    assert "labeling page: http://127.0.0.1:" in proc.stdout

    # no request answered 500 and no "database is locked", in the API or the worker
    assert not re.search(r'HTTP/1\.[01]" 5\d\d', logs["api"]), logs["api"][-3000:]
    for name, text in logs.items():
        assert "database is locked" not in text, f"demo-{name}.log"


def _start_demo(tiny: Path, data: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log = data.parent / "demo.out"
    data.mkdir(parents=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "server.cli.main", "demo", "--dataset", str(tiny)),
                *("--rounds", "3", "--port", str(free_port())),
            ],
            env=_env(data),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_stops_the_demo_and_every_process_it_started(
    tiny: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    data = tmp_path / "data"
    proc, log = _start_demo(tiny, data)
    children: list[psutil.Process] = []
    try:
        demo = psutil.Process(proc.pid)
        # a job is under way: the API and the worker are up and working
        wait_for(
            lambda: "artifact_loop.run_job" in _read(data / "demo-worker.log"),
            "the worker to take a job",
            timeout=600,
        )
        children = demo.children(recursive=True)
        assert len(children) >= 2, "the API and the worker"
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 0, _read(log)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], _read(log)
        assert "stopping" in _read(log) and "Traceback" not in _read(log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for child in children:  # only after a failure: do not leave them to the next test
            with suppress(psutil.NoSuchProcess):
                child.kill()


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
