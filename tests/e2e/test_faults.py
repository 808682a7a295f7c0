"""A worker killed in the middle of a training: the active model stays, the job is retried to
completion, the API keeps answering. PostgreSQL + Redis, real worker processes."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from tests.processes import (
    api_with_dataset,
    celery_worker,
    kill_process,
    wait_for,
)


@pytest.mark.postgres
@pytest.mark.redis
def test_killing_the_worker_mid_training(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    setup = api_with_dataset(pg_url, redis_url, tmp_path, seed=4, shape=(840, 6))
    with setup as (env, http, dataset):
        with celery_worker(env, queues="gpu,io", name="faulty", log=tmp_path / "w1.log") as proc:
            ds, ae, job = _training_under_way(http, dataset, epoch=5)
            # the training yields the cores to the API (ARTIFACT_LOOP_WORKER_NICE, default 10)
            assert psutil.Process(proc.pid).nice() == min(19, os.nice(0) + 10)
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
            done = wait_for(
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


@pytest.mark.postgres
@pytest.mark.redis
def test_a_training_that_loses_its_database_connection_is_retried(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    setup = api_with_dataset(pg_url, redis_url, tmp_path, seed=4, shape=(840, 6))
    with setup as (env, http, dataset):
        with celery_worker(env, queues="gpu,io", name="w", log=tmp_path / "w.log"):
            _, _, job = _training_under_way(http, dataset, epoch=2, epochs=40)
            _kill_connection_reporting_progress(pg_url, job_id=job["id"])
            done = wait_for(
                lambda: (
                    _job(http, job["id"]).get("state") in ("succeeded", "failed")
                    and _job(http, job["id"])
                ),
                "the retried training",
            )
        assert done["state"] == "succeeded", done["error"]
        assert done["attempts"] == 2


def _training_under_way(
    http: httpx.Client, dataset: Path, *, epoch: int, epochs: int = 60
) -> tuple[int, int, dict[str, Any]]:
    """Register ``dataset``, wait for its autoencoder, label 120 patches and start a long
    training; once it reports ``epoch``: the dataset id, the autoencoder id and the job."""
    ds = http.post("/datasets", json={"name": "f", "path": str(dataset)}).json()["id"]
    ae = wait_for(lambda: http.get(f"/datasets/{ds}").json()["active_models"]["ae"], "pretraining")
    with (dataset / "ground_truth.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for r in rows[:120]:
        body = {"x": int(r["x"]), "y": int(r["y"]), "z": int(r["z"]), "label": r["label"]}
        assert http.post(f"/datasets/{ds}/labels", json=body).status_code == 201
    job = http.post(
        f"/datasets/{ds}/jobs",
        json={"kind": "train", "params": {"epochs": epochs, "patience": epochs}},
    ).json()["job"]
    seen = wait_for(lambda: _epoch_reached(_job(http, job["id"]), epoch), "training under way")
    assert seen["state"] == "running", f"the training ended before the fault: {seen}"
    return int(ds), int(ae), dict(job)


def _epoch_reached(job: dict[str, Any], epoch: int) -> dict[str, Any] | None:
    """The job once its training reported ``epoch`` or a later one, or once it ended (a
    fast training can pass a given epoch between two polls)."""
    if job.get("state") in ("succeeded", "failed", "cancelled"):
        return job
    reported = re.match(r"epoch (\d+)/", job.get("message") or "")
    return job if reported and int(reported.group(1)) >= epoch else None


def _kill_connection_reporting_progress(pg_url: str, *, job_id: int) -> None:
    """Kill the training's database connection in the middle of a statement, with the
    database up, as a failover or an operator's pg_terminate_backend does: the job's row is
    held locked until its next progress report waits on it, that backend is terminated,
    and the lock is let go."""
    with psycopg.connect(pg_url) as holder, psycopg.connect(pg_url, autocommit=True) as admin:
        holder.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
        waiting = wait_for(
            lambda: admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE 'UPDATE jobs SET progress%%'"
            ).fetchone(),
            "the training's next progress report",
            timeout=300,
        )
        admin.execute("SELECT pg_terminate_backend(%s)", (waiting[0],))
        holder.rollback()


def _job(http: httpx.Client, job_id: int) -> dict[str, Any]:
    """The job, or nothing while the API answers 503 (its connections were killed too)."""
    r = http.get(f"/jobs/{job_id}")
    return dict(r.json()) if r.status_code == 200 else {}
