"""A stored label is answered 2xx whatever the broker does: the training it starts is queued
in the database, and the broker's message is sent again later (the worker's reaper)."""

from __future__ import annotations

import socket
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from server.auth import create_token
from server.db import migrate
from server.db.base import session_scope
from server.db.tables import Dataset, Job, Label
from server.main import create_app
from server.settings import Settings
from tests import factories
from tests.conftest import write_test_dataset

V1 = "/api/v1"


def _closed_port() -> int:
    """A local port nothing listens on: a broker that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_label_is_answered_200_while_the_broker_is_down(db_url: str, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        broker_url=f"redis://127.0.0.1:{_closed_port()}/0",
        retrain_every=1,
    )
    settings.ensure_dirs()
    migrate.upgrade(db_url)
    write_test_dataset(tmp_path / "ds", shape=(560, 420, 2))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        sessions = client.app.state.artifact_loop.runtime.sessions  # type: ignore[attr-defined]
        with session_scope(sessions) as session:
            _, admin = create_token(session, name="ada", role="admin")
            _, annotator = create_token(session, name="bob", role="annotator")
        created = client.post(
            f"{V1}/datasets",
            json={"name": "d", "path": str(tmp_path / "ds"), "pretrain": False},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert created.status_code == 201, created.text
        dataset_id = int(created.json()["id"])
        with session_scope(sessions) as session:
            dataset = session.get(Dataset, dataset_id)
            assert dataset is not None
            factories.version(session, dataset, kind="ae", status="ready", active=True)
            factories.task(session, dataset, grid_index=0)
        headers = {"Authorization": f"Bearer {annotator}"}
        task = client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=headers).json()
        body = {"label": "artifact", "idempotency_key": "one-press"}
        first = client.post(f"{V1}/tasks/{task['task']['id']}/label", json=body, headers=headers)
        assert first.status_code == 200, first.text
        again = client.post(f"{V1}/tasks/{task['task']['id']}/label", json=body, headers=headers)
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        with session_scope(sessions) as session:
            assert len(session.scalars(select(Label)).all()) == 1
            trainings = session.scalars(select(Job).where(Job.kind == "train")).all()
            assert [job.state for job in trainings] == ["queued"], "sent again by the reaper"
