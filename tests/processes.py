"""Real service processes for end-to-end tests: a Celery worker and the API under uvicorn.

They run the same commands as docker-compose.yml, with the environment pointing at the
test's database and broker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, what: str, timeout: float = 900, every: float = 0.5):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what}")


def pg_redis_env(
    pg_url: str, data_dir: Path, *, broker: str, **extra: str
) -> tuple[dict[str, str], str]:
    """A migrated PostgreSQL database with an admin token, the test's own Redis database
    (``redis_url`` fixture) as the broker, and the environment for services using them (small pretraining, trainings only
    on request). Returns the environment and the admin token."""
    from server.auth import create_token
    from server.db import migrate
    from server.db.base import make_engine, make_sessionmaker, session_scope

    migrate.upgrade(pg_url)
    engine = make_engine(pg_url)
    with session_scope(make_sessionmaker(engine)) as session:
        _, secret = create_token(session, name="admin", role="admin")
    engine.dispose()
    values = {
        "ARTIFACT_LOOP_DATABASE_URL": pg_url,
        "ARTIFACT_LOOP_BROKER_URL": broker,
        "ARTIFACT_LOOP_DATA_DIR": str(data_dir),
        "ARTIFACT_LOOP_PRETRAIN_PATCHES": "200",
        "ARTIFACT_LOOP_PRETRAIN_EPOCHS": "2",
        "ARTIFACT_LOOP_RETRAIN_EVERY": "100000",
    }
    env = service_env(**{**values, **extra})
    return env, secret


@contextmanager
def api_with_dataset(
    pg_url: str, redis_url: str, tmp_path: Path, *, seed: int, shape: tuple[int, int], **extra: str
) -> Iterator[tuple[dict[str, str], httpx.Client, Path]]:
    """The API on a migrated PostgreSQL database with Redis as the broker, and a synthetic
    dataset (artifacts three times as common as by default) not yet registered: yields the
    services' environment, an admin client and the dataset's folder."""
    from server.sim.synth import make_synthetic_dataset

    env, secret = pg_redis_env(pg_url, tmp_path / "data", broker=redis_url, **extra)
    dataset = tmp_path / "ds"
    make_synthetic_dataset(dataset, seed=seed, shape=shape, artifact_rate=3.0)
    with api_server(env, log=tmp_path / "api.log") as base, admin_api(base, secret) as http:
        yield env, http, dataset


def admin_api(base: str, secret: str) -> httpx.Client:
    """An HTTP client for the API at ``base`` with the admin token ``secret``."""
    return httpx.Client(
        base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {secret}"}, timeout=60
    )


def service_env(**values: str) -> dict[str, str]:
    env = {**os.environ, "WEBKNOSSOS_SKIP_VERSION_CHECK": "True", "PYTHONUNBUFFERED": "1"}
    env.update(values)
    return env


@contextmanager
def celery_worker(
    env: dict[str, str], *, queues: str, name: str, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A worker.app worker`` as in docker-compose.yml; waits until it is ready."""
    command = [
        str(BIN / "celery"),
        "-A",
        "worker.app",
        "worker",
        "-Q",
        queues,
        "-n",
        f"{name}@%h",
        "--loglevel",
        "INFO",
    ]
    if "gpu" in queues:
        command += ["--pool", "solo", "--prefetch-multiplier", "1"]
    else:
        command += ["--concurrency", "2"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for_log(log, "ready.", proc, timeout=120)
        yield proc
    finally:
        stop_process(proc)


@contextmanager
def api_server(env: dict[str, str], *, log: Path, workers: int = 1) -> Iterator[str]:
    """``uvicorn server.main:app`` on a free loopback port; yields its base URL."""
    port = free_port()
    command = [str(BIN / "uvicorn"), "server.main:app", "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        command += ["--workers", str(workers)]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"API exited early:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"API did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        stop_process(proc)


def kill_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole process group: what a crash or an OOM kill does."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        kill_process(proc)


def _wait_for_log(log: Path, marker: str, proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if marker in text:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early:\n{text[-3000:]}")
        time.sleep(0.3)
    raise RuntimeError(
        f"process not ready after {timeout} s:\n{log.read_text(errors='replace')[-3000:]}"
    )
