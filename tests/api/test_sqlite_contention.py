"""The embedded SQLite database under a long writer (as a training's bookkeeping can be):
reads are not blocked at all (WAL), writes wait for the lock instead of failing."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.api.conftest import Api, add_tasks

V1 = "/api/v1"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_requests_wait_for_a_long_writer_and_reads_do_not(
    api: Api, dataset_id: int, db_url: str
) -> None:
    add_tasks(api, dataset_id, 3)
    path = Path(db_url.removeprefix("sqlite:///"))
    holding = threading.Event()

    def long_writer() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE datasets SET settings = settings")
        holding.set()
        time.sleep(2.0)
        conn.execute("COMMIT")
        conn.close()

    writer = threading.Thread(target=long_writer)
    writer.start()
    assert holding.wait(10)
    try:
        t0 = time.monotonic()
        read = api.client.get(f"{V1}/datasets/{dataset_id}/tasks", headers=api.annotator)
        read_s = time.monotonic() - t0
        leased = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=api.annotator)
        write_s = time.monotonic() - t0
    finally:
        writer.join()
    assert read.status_code == 200 and read_s < 1.5, "a read waited for the writer"
    assert leased.status_code == 200, leased.text
    assert leased.json()["task"] is not None
    assert write_s >= 1.0, "the lease waited for the write lock"
