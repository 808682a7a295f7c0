"""20 annotators at once against the real server (uvicorn, 2 processes) on PostgreSQL."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope
from server.db.tables import Label
from server.main import create_app
from tests.api.conftest import Api, add_tasks, make_settings
from tests.processes import api_server, service_env

ANNOTATORS = 20
TASKS = 200


@pytest.mark.postgres
def test_concurrent_annotators_never_share_a_task(pg_url: str, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from tests.conftest import write_test_dataset

    migrate.upgrade(pg_url)
    settings = make_settings(tmp_path, pg_url)
    settings.ensure_dirs()
    write_test_dataset(tmp_path / "ds", shape=(1400, 1400, 2))
    # Set-up through the API in-process: tokens, dataset, open tasks.
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings, {}, {}, tmp_path / "ds")
        admin = api.token("admin", "admin")
        ds = client.post(
            "/api/v1/datasets",
            json={"name": "c", "path": str(tmp_path / "ds"), "pretrain": False},
            headers=admin,
        ).json()
        add_tasks(api, ds["id"], TASKS)
        tokens = {f"annotator-{i:02d}": api.token(f"annotator-{i:02d}") for i in range(ANNOTATORS)}

    env = service_env(
        ARTIFACT_LOOP_DATABASE_URL=pg_url,
        ARTIFACT_LOOP_DATA_DIR=str(tmp_path / "data"),
        ARTIFACT_LOOP_BROKER_URL="filesystem://",
    )

    def annotate(name: str, base: str) -> list[tuple[str, int, int]]:
        done: list[tuple[str, int, int]] = []
        with httpx.Client(base_url=base, headers=tokens[name], timeout=30) as http:
            while True:
                r = http.post(f"/api/v1/datasets/{ds['id']}/tasks/next")
                assert r.status_code == 200, r.text
                task = r.json()["task"]
                if task is None:
                    return done
                verdict = "artifact" if task["id"] % 7 == 0 else "clean"
                body = {"label": verdict, "idempotency_key": f"{name}-{task['id']}"}
                first = http.post(f"/api/v1/tasks/{task['id']}/label", json=body)
                # a client retrying after a lost response must not add a second label
                retry = http.post(f"/api/v1/tasks/{task['id']}/label", json=body)
                assert first.status_code == retry.status_code == 200, first.text + retry.text
                assert first.json()["id"] == retry.json()["id"]
                done.append((name, task["id"], first.json()["id"]))

    with (
        api_server(env, log=tmp_path / "api.log", workers=2) as base,
        ThreadPoolExecutor(ANNOTATORS) as pool,
    ):
        results = [f.result() for f in [pool.submit(annotate, n, base) for n in tokens]]

    leased = [task_id for per in results for _, task_id, _ in per]
    assert len(leased) == TASKS, "every task was handed out"
    assert max(Counter(leased).values()) == 1, "no task was leased to two annotators"
    engine = make_engine(pg_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            labels = {lab.id: lab for lab in session.scalars(select(Label))}
    finally:
        engine.dispose()
    assert len(labels) == TASKS, "no label lost, none doubled"
    for name, task_id, label_id in (item for per in results for item in per):
        assert labels[label_id].annotator == name and labels[label_id].task_id == task_id
    assert sum(1 for per in results if per) > 1, "the work was actually shared"


OVERLAP_ANNOTATORS = 6
OVERLAP_TASKS = 40


@pytest.mark.postgres
def test_annotators_racing_on_overlap_tasks_give_each_two_distinct_labels(
    pg_url: str, tmp_path: Path
) -> None:
    """Every task wants two annotators: each ends with exactly two labels, from two different
    people, however the leases interleave."""
    import time

    from fastapi.testclient import TestClient

    from server.db.tables import AnnotationTask
    from tests.conftest import write_test_dataset

    migrate.upgrade(pg_url)
    settings = make_settings(tmp_path, pg_url)
    settings.ensure_dirs()
    write_test_dataset(tmp_path / "ds", shape=(1400, 1400, 2))
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings, {}, {}, tmp_path / "ds")
        admin = api.token("admin", "admin")
        ds = client.post(
            "/api/v1/datasets",
            json={"name": "o", "path": str(tmp_path / "ds"), "pretrain": False},
            headers=admin,
        ).json()
        task_ids = add_tasks(api, ds["id"], OVERLAP_TASKS)
        with session_scope(api.sessions()) as session:
            for task in session.scalars(select(AnnotationTask)):
                task.labels_wanted = 2
        names = [f"annotator-{i}" for i in range(OVERLAP_ANNOTATORS)]
        tokens = {name: api.token(name) for name in names}

    env = service_env(
        ARTIFACT_LOOP_DATABASE_URL=pg_url,
        ARTIFACT_LOOP_DATA_DIR=str(tmp_path / "data"),
        ARTIFACT_LOOP_BROKER_URL="filesystem://",
    )

    def annotate(name: str, base: str) -> list[int]:
        done: list[int] = []
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=base, headers=tokens[name], timeout=30) as http:
            while time.monotonic() < deadline:
                r = http.post(f"/api/v1/datasets/{ds['id']}/tasks/next")
                assert r.status_code == 200, r.text
                task = r.json()["task"]
                if task is None:
                    # others may still hold tasks that come back wanting a second label
                    counts = http.get(f"/api/v1/datasets/{ds['id']}", headers=admin).json()
                    if counts["tasks"].get("labelled", 0) == OVERLAP_TASKS:
                        return done
                    time.sleep(0.05)
                    continue
                body = {"label": "clean", "idempotency_key": f"{name}-{task['id']}"}
                r = http.post(f"/api/v1/tasks/{task['id']}/label", json=body)
                assert r.status_code == 200, r.text
                done.append(task["id"])
        raise AssertionError(f"{name}: the overlap tasks were not all labelled in time")

    with (
        api_server(env, log=tmp_path / "api.log", workers=2) as base,
        ThreadPoolExecutor(OVERLAP_ANNOTATORS) as pool,
    ):
        results = [f.result() for f in [pool.submit(annotate, n, base) for n in names]]

    for per in results:
        assert len(per) == len(set(per)), "nobody got the same task twice"
    engine = make_engine(pg_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            labels = list(session.scalars(select(Label)))
            statuses = set(session.scalars(select(AnnotationTask.status)))
    finally:
        engine.dispose()
    by_task: dict[int, list[str]] = {}
    for lab in labels:
        by_task.setdefault(int(lab.task_id or 0), []).append(lab.annotator)
    assert sorted(by_task) == sorted(task_ids)
    assert all(len(who) == 2 == len(set(who)) for who in by_task.values()), by_task
    assert statuses == {"labelled"}
    assert sum(1 for per in results if per) > 2, "the work was shared"
