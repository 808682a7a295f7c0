"""With the API and a real Celery worker: audit labels that arrive after a training measure the
active version again; a new classifier that is worse on the same audit patches than the active
one beyond the paired interval is kept, flagged as held back, and not made active."""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.auth import create_token
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope
from server.sim.synth import make_synthetic_dataset
from tests.processes import api_server, celery_worker, service_env

LOOP = {
    "ARTIFACT_LOOP_PRETRAIN_PATCHES": "400",
    "ARTIFACT_LOOP_PRETRAIN_EPOCHS": "2",
    "ARTIFACT_LOOP_TRAIN_EPOCHS": "12",
    "ARTIFACT_LOOP_RETRAIN_EVERY": "100000",  # trainings only when the test asks
    "ARTIFACT_LOOP_BATCH_SIZE": "10",
    "ARTIFACT_LOOP_AUDIT_SIZE": "150",
}
TRAINING_LABELS = 240
# pretrain, score and propose, then two trainings each followed by scoring: minutes on 2 cores
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[httpx.Client, Path]]:
    dataset = tmp_path / "ds"
    make_synthetic_dataset(dataset, seed=5, shape=(1400, 12), artifact_rate=3.0)
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    with session_scope(make_sessionmaker(engine)) as session:
        _, secret = create_token(session, name="lab-admin", role="admin")
    engine.dispose()
    env = service_env(
        ARTIFACT_LOOP_DATABASE_URL=db_url,
        ARTIFACT_LOOP_BROKER_URL="filesystem://",
        ARTIFACT_LOOP_DATA_DIR=str(tmp_path / "data"),
        **LOOP,
    )
    with (
        celery_worker(env, queues="gpu,io", name="activation", log=tmp_path / "worker.log"),
        api_server(env, log=tmp_path / "api.log") as base,
    ):
        headers = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=f"{base}/api/v1", headers=headers, timeout=60) as http:
            yield http, dataset


def _wait(http: httpx.Client, ds: int, what: str, done: Any, timeout: float = 420) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = http.get("/jobs", params={"dataset_id": ds, "limit": 100}).json()["items"]
        failed = [j for j in jobs if j["state"] == "failed"]
        assert not failed, f"a job failed: {failed[0]['kind']}: {failed[0]['error']}"
        value = done()
        if value:
            return value
        time.sleep(1.0)
    pytest.fail(f"timed out waiting for {what}")


def _train(http: httpx.Client, ds: int) -> dict[str, Any]:
    r = http.post(f"/datasets/{ds}/jobs", json={"kind": "train"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job"]["id"]

    def trained() -> dict[str, Any] | None:
        job = http.get(f"/jobs/{job_id}").json()
        if job["state"] != "succeeded":
            return None
        version_id = job["result"]["model_version_id"]
        return http.get(f"/models/{version_id}").json()  # measured within the training step

    return _wait(http, ds, "a trained classifier", trained)


def _audit_set(version: dict[str, Any]) -> dict[str, Any]:
    return version["metrics"]["audit"]["audit_set"]


def test_a_worse_retraining_is_kept_but_not_activated(
    stack: tuple[httpx.Client, Path],
) -> None:
    http, path = stack
    with (path / "ground_truth.csv").open() as fh:
        truth = {(int(r["x"]), int(r["y"]), int(r["z"])): r["label"] for r in csv.DictReader(fh)}
    r = http.post("/datasets", json={"name": "activation", "path": str(path)})
    assert r.status_code == 201, r.text
    ds = r.json()["id"]

    def audit_tasks() -> list[dict[str, Any]]:
        page = http.get(f"/datasets/{ds}/tasks", params={"kind": "audit", "limit": 1000})
        return page.json()["items"]

    audit = _wait(http, ds, "the audit set (pretrain, score, propose)", audit_tasks)
    early, late = audit[: len(audit) * 2 // 3], audit[len(audit) * 2 // 3 :]
    for task in early:  # a third of the audit set gets its labels only after the training
        verdict = truth[(task["x"], task["y"], task["z"])]
        r = http.post(f"/tasks/{task['id']}/label", json={"label": verdict})
        assert r.status_code == 200, r.text
    # training labels: the right verdicts on patches outside the audit set
    audit_at = {(t["x"], t["y"], t["z"]) for t in audit}
    positions = [p for p in sorted(truth) if p not in audit_at][::3][:TRAINING_LABELS]
    given = []
    for x, y, z in positions:
        r = http.post(
            f"/datasets/{ds}/labels", json={"x": x, "y": y, "z": z, "label": truth[(x, y, z)]}
        )
        assert r.status_code == 201, r.text
        given.append(r.json())

    good = _train(http, ds)
    assert good["active"] and good["held_back"] is None
    assert _audit_set(good)["patches"] == len(early)

    # audit labels arrive: the active version is measured again on the whole audit set
    for task in late:
        verdict = truth[(task["x"], task["y"], task["z"])]
        r = http.post(f"/tasks/{task['id']}/label", json={"label": verdict})
        assert r.status_code == 200, r.text

    def remeasured() -> dict[str, Any] | None:
        version = http.get(f"/models/{good['id']}").json()
        return version if _audit_set(version)["patches"] == len(audit) else None

    good = _wait(http, ds, "the active version measured on the new audit labels", remeasured)
    jobs = http.get("/jobs", params={"dataset_id": ds, "limit": 100}).json()["items"]
    assert any(j["kind"] == "audit" and j["state"] == "succeeded" for j in jobs)
    good_audit = good["metrics"]["audit"]
    assert good_audit["positives"] == sum(
        truth[(t["x"], t["y"], t["z"])] == "artifact" for t in audit
    )
    assert good_audit["intervals"]["pr_auc"] is not None

    # the annotator got every training verdict backwards: the next model learns the opposite
    for label in given:
        flipped = "clean" if label["label"] == "artifact" else "artifact"
        r = http.put(f"/labels/{label['id']}", json={"label": flipped})
        assert r.status_code == 200, r.text
    worse = _train(http, ds)
    worse_audit = worse["metrics"]["audit"]
    assert worse_audit["audit_set"]["patches"] == len(audit)
    paired = worse_audit["paired"][str(good["id"])]
    assert paired["patches"] == len(audit) and paired["artifacts"] == good_audit["positives"]
    assert paired["pr_auc"]["interval"][1] < 0, (
        "the test needs a version worse beyond the paired interval",
        paired,
    )
    # the active one was measured again too, against the new one on the same patches
    good = http.get(f"/models/{good['id']}").json()
    assert str(worse["id"]) in good["metrics"]["audit"]["paired"]

    # kept, flagged, not active; the good one stays active
    versions = {v["id"]: v for v in http.get(f"/datasets/{ds}/models").json()["items"]}
    assert versions[worse["id"]]["status"] == "ready" and not versions[worse["id"]]["active"]
    assert "paired 95% interval" in versions[worse["id"]]["held_back"]
    assert versions[good["id"]]["active"] and not versions[good["id"]]["pinned"]
    detail = http.get(f"/datasets/{ds}").json()
    assert detail["active_models"]["classifier"] == good["id"]
