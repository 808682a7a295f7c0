"""A worker killed while it computes the autoencoder's features, and again while it scores a
classifier's candidates: the chunk it held runs again and the round completes, with every
chunk's result on disk. PostgreSQL + Redis, real worker processes, SIGKILL."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.versions.features import CURRENT_SCORES
from tests.processes import (
    api_with_dataset,
    celery_worker,
    kill_process,
    wait_for,
)


def _running_chunk(http: httpx.Client, ds: int) -> dict[str, Any] | None:
    """A score chunk job under way (it has reported progress on its patches)."""
    chunks = http.get(
        "/jobs",
        params={"dataset_id": ds, "kind": "score_chunk", "state": "running", "top_level": False},
    ).json()["items"]
    return next((j for j in chunks if j["progress"] > 0), None)


def _finished(http: httpx.Client, job_id: int) -> dict[str, Any] | None:
    job = http.get(f"/jobs/{job_id}").json()
    return job if job["state"] in ("succeeded", "failed") else None


def _kill_during_a_chunk(http: httpx.Client, ds: int, proc: Any, what: str) -> dict[str, Any]:
    chunk = wait_for(lambda: _running_chunk(http, ds), what, every=0.05)
    kill_process(proc)  # SIGKILL, like the OOM killer, in the middle of the chunk
    return chunk


@pytest.mark.postgres
@pytest.mark.redis
def test_a_worker_killed_while_scoring_loses_nothing(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    setup = api_with_dataset(  # 3,456 patches
        pg_url, redis_url, tmp_path, seed=6, shape=(1680, 24), ARTIFACT_LOOP_RESEND_AFTER_S="5"
    )
    logs = iter(tmp_path / f"worker-{i}.log" for i in range(10))
    with setup as (env, http, dataset):
        # 1. killed while it computes the autoencoder's features (2 chunks of 2,048 patches)
        with celery_worker(env, queues="gpu,io", name="w", log=next(logs)) as proc:
            ds = http.post("/datasets", json={"name": "k", "path": str(dataset)}).json()["id"]
            killed = _kill_during_a_chunk(http, ds, proc, "the autoencoder's features under way")
        assert http.get(f"/jobs/{killed['id']}").json()["state"] == "running"
        with celery_worker(env, queues="gpu,io", name="w", log=next(logs)):
            done = wait_for(lambda: _finished(http, killed["id"]), "the killed chunk rerun")
            parent = wait_for(lambda: _finished(http, killed["parent_id"]), "the features")
            wait_for(
                lambda: http.get(f"/datasets/{ds}/tasks", params={"status": "open"}).json()[
                    "total"
                ],
                "the cold-start proposals",
            )
        assert done["state"] == "succeeded" and done["attempts"] == 2, done
        assert parent["state"] == "succeeded", parent["error"]
        ae = http.get(f"/datasets/{ds}").json()["active_models"]["ae"]
        features = tmp_path / "data" / "models" / f"dataset-{ds}" / f"version-{ae}" / "features"
        assert len(list(features.glob("embed-*.npy"))) == parent["result"]["chunks"] == 2

        # 2. killed while it scores a new classifier's candidates
        with (dataset / "ground_truth.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        picked = [r for r in rows if r["label"] == "artifact"][:40] + rows[:120]
        for r in picked:
            body = {"x": int(r["x"]), "y": int(r["y"]), "z": int(r["z"]), "label": r["label"]}
            assert http.post(f"/datasets/{ds}/labels", json=body).status_code in (200, 201)
        with celery_worker(env, queues="gpu,io", name="w", log=next(logs)) as proc:
            train = http.post(
                f"/datasets/{ds}/jobs", json={"kind": "train", "params": {"epochs": 3}}
            ).json()["job"]
            assert wait_for(lambda: _finished(http, train["id"]), "training")["state"] == (
                "succeeded"
            )
            killed = _kill_during_a_chunk(http, ds, proc, "the candidates being scored")
        score = http.get(f"/jobs/{killed['parent_id']}").json()
        version = score["params"]["model_version_id"]
        assert http.get(f"/models/{version}").json()["kind"] == "classifier"
        with celery_worker(env, queues="gpu,io", name="w", log=next(logs)):
            done = wait_for(lambda: _finished(http, killed["id"]), "the killed chunk rerun")
            score = wait_for(lambda: _finished(http, killed["parent_id"]), "the scoring")
            proposed = wait_for(
                lambda: [
                    t
                    for t in http.get(
                        f"/datasets/{ds}/tasks", params={"status": "open", "limit": 1000}
                    ).json()["items"]
                    if t["model_version_id"] == version
                ],
                "proposals of the new classifier",
            )
        assert done["state"] == "succeeded" and done["attempts"] == 2, done
        assert score["state"] == "succeeded", score["error"]
        scores = tmp_path / "data" / "models" / f"dataset-{ds}" / f"version-{version}" / "scores"
        current = scores / (scores / CURRENT_SCORES).read_text().strip()  # the finished scoring's
        assert len(list(current.glob("chunk-*.npz"))) == score["result"]["chunks"] >= 2
        assert len(proposed) == 25
