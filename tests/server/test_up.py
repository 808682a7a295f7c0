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

from tests.processes import free_port, service_env


def test_up_serves_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = service_env(ARTIFACT_LOOP_DATA_DIR=str(tmp_path / "data"))
    env.pop("ARTIFACT_LOOP_DATABASE_URL", None)
    env.pop("ARTIFACT_LOOP_BROKER_URL", None)
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
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) in (0, 1)
        time.sleep(1)
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


pytestmark = pytest.mark.slow
