"""`artifact-loop up`: API and one local worker with one command; Ctrl-C stops both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import write_test_dataset
from tests.processes import free_port, service_env, wait_for


def _cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_up_starts_what_is_pending_serves_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = service_env(
        ARTIFACT_LOOP_DATA_DIR=str(tmp_path / "data"),
        ARTIFACT_LOOP_PRETRAIN_PATCHES="100",
        ARTIFACT_LOOP_PRETRAIN_EPOCHS="1",
    )
    env.pop("ARTIFACT_LOOP_DATABASE_URL", None)
    env.pop("ARTIFACT_LOOP_BROKER_URL", None)
    write_test_dataset(tmp_path / "ds", shape=(420, 420, 2))
    out = _cli(env, "dataset", "add", "later", str(tmp_path / "ds"), "--no-pretrain")
    assert "pretrain" not in out, "deferred"
    token = _cli(env, "token", "create", "--role", "admin", "root").splitlines()[1].strip()
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli.main", "up", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/api/v1/ready", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.5)
        assert (tmp_path / "data" / "artifact-loop.sqlite").exists(), "embedded database"
        children = psutil.Process(proc.pid).children(recursive=True)
        # the worker is up too: wait for its banner (it logs at WARNING level)
        deadline = time.monotonic() + 90
        while "local@" not in (tmp_path / "up.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.5)
        assert "started pretrain job 1 of 'later'" in (tmp_path / "up.log").read_text()

        def pretrain_state() -> str | None:
            jobs = httpx.get(
                f"http://127.0.0.1:{port}/api/v1/jobs",
                params={"kind": "pretrain"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ).json()["items"]
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            return jobs[0]["state"] if jobs and jobs[0]["state"] != "queued" else None

        # the pending pretraining is taken by up's worker (on state, not on time)
        assert wait_for(pretrain_state, "up's worker to take the pretraining", timeout=300) in (
            "running",
            "succeeded",
        )
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) in (0, 1)
        time.sleep(1)
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


pytestmark = pytest.mark.slow
