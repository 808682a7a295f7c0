"""A broker that forgets: Redis killed and restarted empty while a training is queued. The
database is the truth, so the worker's reaper sends the job again and the loop goes on.
PostgreSQL, a Redis server of the test's own, real API and worker processes."""

from __future__ import annotations

import csv
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from server.sim.synth import make_synthetic_dataset
from tests.processes import (
    admin_api,
    api_server,
    celery_worker,
    free_port,
    kill_process,
    pg_redis_env,
    stop_process,
    wait_for,
)


@contextmanager
def redis_server(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A Redis server without persistence, as in docker-compose.yml."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    import redis

    client = redis.Redis(port=port)
    wait_for(lambda: _pings(client), "redis", timeout=30, every=0.1)
    try:
        yield proc
    finally:
        stop_process(proc)


def _pings(client: object) -> bool:
    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except Exception:
        return False


@pytest.mark.postgres
@pytest.mark.redis
def test_a_training_queued_before_redis_restarts_empty_still_runs(
    pg_url: str, tmp_path: Path
) -> None:
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    env, secret = pg_redis_env(
        pg_url, tmp_path / "data", broker=broker,
        ARTIFACT_LOOP_RETRAIN_EVERY="30", ARTIFACT_LOOP_RESEND_AFTER_S="5",
    )  # fmt: skip
    dataset = tmp_path / "ds"
    make_synthetic_dataset(dataset, seed=8, shape=(840, 6), artifact_rate=3.0)
    with (dataset / "ground_truth.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    first = redis_server(port)
    first_proc = first.__enter__()
    with api_server(env, log=tmp_path / "api.log") as base:
        http = admin_api(base, secret)
        with celery_worker(env, queues="gpu,io", name="w", log=tmp_path / "w1.log"):
            ds = http.post("/datasets", json={"name": "b", "path": str(dataset)}).json()["id"]
            wait_for(
                lambda: http.get(f"/datasets/{ds}").json()["active_models"]["ae"], "pretraining"
            )
            wait_for(lambda: _proposals(http, ds), "cold-start proposals")
        # no worker: the training the labels start waits in Redis
        for r in rows[:30]:
            body = {"x": int(r["x"]), "y": int(r["y"]), "z": int(r["z"]), "label": r["label"]}
            assert http.post(f"/datasets/{ds}/labels", json=body).status_code == 201
        (train,) = http.get("/jobs", params={"dataset_id": ds, "kind": "train"}).json()["items"]
        assert train["state"] == "queued"
        kill_process(first_proc)  # Redis dies; nothing of it was persisted
        with redis_server(port):
            back = time.monotonic()
            with celery_worker(env, queues="gpu,io", name="w", log=tmp_path / "w2.log"):
                wait_for(
                    lambda: http.get(f"/jobs/{train['id']}").json()["state"] != "queued",
                    "the lost training to be sent again",
                    timeout=60,
                )
                started_after = time.monotonic() - back
                done = wait_for(
                    lambda: (
                        (j := http.get(f"/jobs/{train['id']}").json())["state"]
                        in ("succeeded", "failed")
                        and j
                    ),
                    "the training",
                )
                assert done["state"] == "succeeded", done["error"]
                version = done["result"]["model_version_id"]
                wait_for(lambda: version in _proposals(http, ds), "proposals of the new version")
    assert started_after < 60


def _proposals(http: httpx.Client, ds: int) -> set[int]:
    tasks = http.get(f"/datasets/{ds}/tasks", params={"kind": "proposal", "status": "open"})
    return {t["model_version_id"] for t in tasks.json()["items"]}
