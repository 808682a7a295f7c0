"""PostgreSQL stopped for 20 s under load: clients get 503 with Retry-After (never a 500),
no label that got a 2xx is lost, and the log gains a line or two, not one per request.

Stops a PostgreSQL server of its own (``initdb``/``pg_ctl`` on a free port, see
:mod:`tests.postgres_server`), never the one other tests and stacks on the machine share.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
from sqlalchemy import select

from server.auth import create_token
from server.datasets.service import grid_of, register_dataset
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope
from server.db.tables import AnnotationTask, Label
from tests.conftest import write_test_dataset
from tests.postgres_server import PostgresServer, throwaway_postgres
from tests.processes import api_server, service_env

OUTAGE_S = 20.0
ACCESS_LOG = re.compile(r'" \d{3}( [A-Za-z ]+)?$')
ANNOTATORS = 10


def _wait_for_postgres(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _seed(url: str, path: Path) -> tuple[int, list[str]]:
    engine = make_engine(url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            dataset = register_dataset(session, name="outage", path=str(path))
            origins = grid_of(dataset).origins(np.arange(400))
            # more tasks than patches (each patch offered several times), so labelling
            # goes on before, during and after the outage; a patch is in play in one
            # batch only, so the repeats are off the grid (as tasks of label files are)
            session.add_all(
                AnnotationTask(
                    dataset_id=dataset.id,
                    kind="proposal",
                    grid_index=i if i < 400 else None,
                    x=int(o[0]),
                    y=int(o[1]),
                    z=int(o[2]),
                    w=140,
                    h=140,
                    rank=i,
                    reason="uncertain",
                    status="open",
                )
                for i, o in enumerate(np.concatenate([origins] * 10))
            )
            secrets = [
                create_token(session, name=f"a{i:02d}", role="annotator")[1]
                for i in range(ANNOTATORS)
            ]
            return dataset.id, secrets
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_stopped_under_load(tmp_path: Path) -> None:
    with throwaway_postgres() as server:
        with psycopg.connect(server.url, autocommit=True) as admin:
            admin.execute('CREATE DATABASE "outage"')
        _run_outage(server, server.url.rsplit("/", 1)[0] + "/outage", tmp_path)


def _run_outage(server: PostgresServer, pg_url: str, tmp_path: Path) -> None:
    migrate.upgrade(pg_url)
    write_test_dataset(tmp_path / "ds", shape=(1400, 1400, 4))
    dataset_id, secrets = _seed(pg_url, tmp_path / "ds")
    env = service_env(
        ARTIFACT_LOOP_DATABASE_URL=pg_url,
        ARTIFACT_LOOP_DATA_DIR=str(tmp_path / "data"),
        ARTIFACT_LOOP_BROKER_URL="filesystem://",
    )
    statuses: Counter[int] = Counter()
    missing_retry_after: list[str] = []
    acknowledged: set[int] = set()
    stop = threading.Event()

    def call(http: httpx.Client, path: str, **kwargs: object) -> httpx.Response | None:
        try:
            r = http.post(path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError:
            return None
        statuses[r.status_code] += 1
        if r.status_code == 503 and "retry-after" not in r.headers:
            missing_retry_after.append(path)
        return r

    def annotate(secret: str) -> None:
        headers = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=f"{base}/api/v1", headers=headers, timeout=30) as http:
            while not stop.is_set():
                r = call(http, f"/datasets/{dataset_id}/tasks/next")
                if r is None or r.status_code != 200 or r.json()["task"] is None:
                    time.sleep(0.05)
                    continue
                task = r.json()["task"]
                body = {"label": "clean", "idempotency_key": f"{secret[-6:]}-{task['id']}"}
                # retried with the same key until it is acknowledged, as a client should
                while not stop.is_set():
                    r = call(http, f"/tasks/{task['id']}/label", json=body)
                    if r is not None and r.status_code == 200:
                        acknowledged.add(int(r.json()["id"]))
                        break
                    if r is not None and r.status_code not in (502, 503):
                        break
                    time.sleep(0.05)

    log = tmp_path / "api.log"
    with api_server(env, log=log, workers=2) as base:
        threads = [threading.Thread(target=annotate, args=(s,)) for s in secrets]
        for t in threads:
            t.start()
        try:
            time.sleep(3)
            lines_before = len(log.read_text(errors="replace").splitlines())
            server.stop()
            stopped_at = time.monotonic()
            try:
                time.sleep(OUTAGE_S)
            finally:
                server.start()
            outage_s = time.monotonic() - stopped_at
            _wait_for_postgres(pg_url)
            time.sleep(6)  # the load goes on after the database is back
            lines = [
                line
                for line in log.read_text(errors="replace").splitlines()[lines_before:]
                if not ACCESS_LOG.search(line)  # one per request, outage or not
            ]
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
    engine = make_engine(pg_url)
    with session_scope(make_sessionmaker(engine)) as session:
        stored = set(session.scalars(select(Label.id)))
    engine.dispose()

    print(f"statuses {dict(statuses)}, {len(acknowledged)} labels, {len(lines)} log lines")
    print("\n".join(lines[:20]))
    assert statuses[500] == 0, statuses
    assert statuses[503] > 0, f"the outage was noticed: {statuses}"
    assert missing_retry_after == []
    assert acknowledged and acknowledged <= stored, f"lost: {sorted(acknowledged - stored)[:10]}"
    assert len(lines) < 10 * outage_s, "\n".join(lines[:40])
    assert not any("Traceback" in line for line in lines), "\n".join(lines[:40])
