"""20 annotators label through batch replacements: no annotator labels a patch twice, a patch
gets more labels than one only where its task wanted a second annotator (overlap), and `next`
never answers "no tasks" while tasks are open. uvicorn with 2 workers on PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from server.annotation.proposals import demote_superseded, replace_proposals
from server.auth import create_token
from server.datasets.service import get_dataset, grid_of, register_dataset
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope, write_transaction
from server.db.tables import AnnotationTask, Label
from tests.conftest import write_test_dataset
from tests.processes import api_server, service_env

ANNOTATORS = 20
RUN_S = 10.0
REPLACE_AT_S = (2.0, 5.0, 8.0)
HOLD_S = 0.5  # a replacement that takes its time to commit, as a big batch on a busy server


def _seed(url: str, path: Path) -> tuple[int, list[str]]:
    engine = make_engine(url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            dataset = register_dataset(session, name="load", path=str(path))
            grid = grid_of(dataset)
            origins = grid.origins(np.arange(3600))
            session.add_all(
                AnnotationTask(
                    dataset_id=dataset.id,
                    kind="proposal",
                    grid_index=i,
                    x=int(o[0]),
                    y=int(o[1]),
                    z=int(o[2]),
                    w=140,
                    h=140,
                    rank=i,
                    reason="uncertain",
                    status="open",
                )
                for i, o in enumerate(origins)
            )
            secrets = [
                create_token(session, name=f"a{i:02d}", role="annotator")[1]
                for i in range(ANNOTATORS)
            ]
            return dataset.id, secrets
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_labelling_through_batch_replacements(pg_url: str, tmp_path: Path) -> None:
    migrate.upgrade(pg_url)
    # 4,800 grid patches: on an idle machine 20 annotators label ~150 a second, and the
    # open tasks must not run out before the end
    write_test_dataset(tmp_path / "ds", shape=(2800, 2800, 12))
    dataset_id, secrets = _seed(pg_url, tmp_path / "ds")
    env = service_env(
        ARTIFACT_LOOP_DATABASE_URL=pg_url,
        ARTIFACT_LOOP_DATA_DIR=str(tmp_path / "data"),
        ARTIFACT_LOOP_BROKER_URL="filesystem://",
    )
    no_tasks: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def annotate(secret: str) -> None:
        headers = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=f"{base}/api/v1", headers=headers, timeout=30) as http:
            while not stop.is_set():
                r = http.post(f"/datasets/{dataset_id}/tasks/next")
                if r.status_code != 200:
                    errors.append(f"next {r.status_code}")
                    continue
                task = r.json()["task"]
                if task is None:
                    no_tasks.append(time.monotonic())
                    time.sleep(0.1)
                    continue
                body = {"label": "clean", "idempotency_key": f"{secret[-6:]}-{task['id']}"}
                r = http.post(f"/tasks/{task['id']}/label", json=body)
                if r.status_code != 200:
                    errors.append(f"label {r.status_code}: {r.text[:100]}")

    engine = make_engine(pg_url)
    sessions = make_sessionmaker(engine)
    rng = np.random.default_rng(0)
    windows: list[tuple[float, float]] = []
    with api_server(env, log=tmp_path / "api.log", workers=2) as base:
        threads = [threading.Thread(target=annotate, args=(s,)) for s in secrets]
        start = time.monotonic()
        for t in threads:
            t.start()
        try:
            for at in REPLACE_AT_S:
                time.sleep(max(0.0, start + at - time.monotonic()))
                # the new batch overlaps the old one: leased, labelled and open patches alike
                picks = [
                    {"index": int(i), "reason": "uncertain", "score": 1.0}
                    for i in rng.permutation(4800)[:3000]
                ]
                t0 = time.monotonic() - start
                with write_transaction(sessions) as session:
                    dataset = get_dataset(session, dataset_id)
                    batch = replace_proposals(
                        session,
                        dataset=dataset,
                        grid=grid_of(dataset),
                        model_version_id=None,  # type: ignore[arg-type]
                        job_id=None,
                        picks=picks,
                    )
                    time.sleep(HOLD_S)
                with write_transaction(sessions) as session:  # as the propose step does
                    demote_superseded(
                        session, dataset_id=dataset_id, first_new_id=batch.first_new_id
                    )
                windows.append((round(t0, 2), round(time.monotonic() - start, 2)))
            time.sleep(max(0.0, start + RUN_S - time.monotonic()))
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)

    with session_scope(sessions) as session:
        rows = session.execute(
            select(Label.x, Label.y, Label.z, Label.annotator, AnnotationTask.labels_wanted).join(
                AnnotationTask, AnnotationTask.id == Label.task_id
            )
        ).all()
        per_patch = Counter((x, y, z) for x, y, z, _who, _wanted in rows)
        wanted: dict[tuple[int, int, int], int] = {}
        for x, y, z, _who, n in rows:
            wanted[(x, y, z)] = max(n, wanted.get((x, y, z), 1))
        per_person = Counter((x, y, z, who) for x, y, z, who, _wanted in rows)
        labelled = sum(per_patch.values())
        still_open = session.scalar(
            select(func.count(AnnotationTask.id)).where(AnnotationTask.status == "open")
        )
    engine.dispose()
    twice = {patch: n for patch, n in per_patch.items() if n > wanted[patch]}
    same_person = {key: n for key, n in per_person.items() if n > 1}
    print("no-task answers at", [round(t - start, 2) for t in no_tasks], "windows", windows)
    print(
        f"{labelled} labels, {len(no_tasks)} no-task answers, {still_open} open, errors {Counter(errors)}"
    )
    assert labelled > 50, "the annotators did label"
    assert errors == []
    assert same_person == {}, f"{len(same_person)} patches labelled twice by one annotator"
    assert twice == {}, f"{len(twice)} patches labelled more often than their task wanted"
    assert still_open and still_open > 50, "tasks stayed open throughout"
    assert no_tasks == [], f"{len(no_tasks)} 'no tasks' answers with tasks open"
