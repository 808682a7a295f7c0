"""A worker killed in the middle of a training: the active model stays, the job is retried to
completion, the API keeps answering. PostgreSQL + Redis, real worker processes."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import httpx
import pytest

from server.auth import create_token
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope
from server.synth import make_synthetic_dataset
from tests.processes import api_server, celery_worker, kill_process, service_env


def _wait(predicate, what: str, timeout: float = 300):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.postgres
@pytest.mark.redis
def test_killing_the_worker_mid_training(pg_url: str, tmp_path: Path) -> None:
    import redis

    broker = "redis://127.0.0.1:6379/15"
    redis.Redis.from_url(broker).flushdb()
    dataset = tmp_path / "ds"
    make_synthetic_dataset(dataset, seed=4, shape=(840, 6), artifact_rate=3.0)
    migrate.upgrade(pg_url)
    engine = make_engine(pg_url)
    with session_scope(make_sessionmaker(engine)) as session:
        _, secret = create_token(session, name="admin", role="admin")
    engine.dispose()
    env = service_env(
        ARTIFACT_LOOP_DATABASE_URL=pg_url,
        ARTIFACT_LOOP_BROKER_URL=broker,
        ARTIFACT_LOOP_DATA_DIR=str(tmp_path / "data"),
        ARTIFACT_LOOP_PRETRAIN_PATCHES="200",
        ARTIFACT_LOOP_PRETRAIN_EPOCHS="2",
        ARTIFACT_LOOP_RETRAIN_EVERY="100000",  # trainings only on request here
    )
    with api_server(env, log=tmp_path / "api.log") as base:
        http = httpx.Client(
            base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {secret}"}, timeout=60
        )
        with celery_worker(env, queues="gpu,io", name="faulty", log=tmp_path / "w1.log") as proc:
            ds = http.post("/datasets", json={"name": "f", "path": str(dataset)}).json()["id"]
            ae = _wait(
                lambda: http.get(f"/datasets/{ds}").json()["active_models"]["ae"], "pretraining"
            )
            with (dataset / "ground_truth.csv").open() as fh:
                rows = list(csv.DictReader(fh))
            for r in rows[:120]:
                body = {"x": int(r["x"]), "y": int(r["y"]), "z": int(r["z"]), "label": r["label"]}
                assert http.post(f"/datasets/{ds}/labels", json=body).status_code == 201
            job = http.post(
                f"/datasets/{ds}/jobs",
                json={"kind": "train", "params": {"epochs": 120, "patience": 120}},
            ).json()["job"]
            _wait(
                lambda: http.get(f"/jobs/{job['id']}").json()["message"].startswith("epoch 5"),
                "training under way",
            )
            kill_process(proc)  # SIGKILL, like the OOM killer

        # the API keeps answering and nothing changed for users
        assert http.get("/health").status_code == 200
        detail = http.get(f"/datasets/{ds}").json()
        assert detail["active_models"] == {"ae": ae, "classifier": None}
        versions = http.get(f"/datasets/{ds}/models", params={"kind": "classifier"}).json()["items"]
        assert all(not v["active"] and v["status"] == "training" for v in versions)
        assert http.get(f"/jobs/{job['id']}").json()["state"] == "running"

        # the worker comes back (same name, as a supervisor restarts it): the job is retried
        with celery_worker(env, queues="gpu,io", name="faulty", log=tmp_path / "w2.log"):
            done = _wait(
                lambda: (
                    (j := http.get(f"/jobs/{job['id']}").json())["state"] in ("succeeded", "failed")
                    and j
                ),
                "the retried training",
            )
        assert done["state"] == "succeeded", done["error"]
        assert done["attempts"] == 2
        versions = http.get(f"/datasets/{ds}/models", params={"kind": "classifier"}).json()["items"]
        statuses = sorted(v["status"] for v in versions)
        assert statuses == ["failed", "ready"], "the killed attempt's model is marked failed"
        ready = next(v for v in versions if v["status"] == "ready")
        assert http.get(f"/datasets/{ds}").json()["active_models"]["classifier"] == ready["id"]
