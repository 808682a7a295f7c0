"""An API app on a real database (SQLite or PostgreSQL) and a real filesystem broker."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.auth import create_token
from server.db import migrate
from server.db.base import session_scope
from server.main import create_app
from server.settings import Settings
from tests.conftest import write_test_dataset


@dataclass
class Api:
    client: TestClient
    settings: Settings
    admin: dict[str, str]
    annotator: dict[str, str]
    dataset_path: Path

    def sessions(self):  # type: ignore[no-untyped-def]
        return self.client.app.state.artifact_loop.runtime.sessions  # type: ignore[attr-defined]

    def token(self, name: str, role: str = "annotator") -> dict[str, str]:
        with session_scope(self.sessions()) as session:
            _, secret = create_token(session, name=name, role=role)
        return {"Authorization": f"Bearer {secret}"}


def make_settings(tmp_path: Path, db_url: str, **overrides: object) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        broker_url="filesystem://",
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    settings = make_settings(tmp_path, db_url)
    settings.ensure_dirs()
    if not settings.is_sqlite:
        migrate.upgrade(db_url)
    dataset_path = tmp_path / "ds"
    write_test_dataset(dataset_path, shape=(560, 420, 4))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        probe = Api(client, settings, {}, {}, dataset_path)
        probe.admin = probe.token("ada", "admin")
        probe.annotator = probe.token("bob")
        yield probe


@pytest.fixture
def dataset_id(api: Api) -> int:
    r = api.client.post(
        "/api/v1/datasets",
        json={"name": "demo", "path": str(api.dataset_path), "pretrain": False},
        headers=api.admin,
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def add_tasks(api: Api, dataset_id: int, n: int) -> list[int]:
    """Open proposal tasks on the first ``n`` grid patches, as the propose job makes them."""
    from server.datasets.service import get_dataset, grid_of
    from server.db.tables import AnnotationTask

    with session_scope(api.sessions()) as session:
        dataset = get_dataset(session, dataset_id)
        grid = grid_of(dataset)
        origins = grid.origins(list(range(n)))
        tasks = [
            AnnotationTask(
                dataset_id=dataset_id,
                kind="proposal",
                grid_index=i,
                x=int(o[0]),
                y=int(o[1]),
                z=int(o[2]),
                w=dataset.patch_size,
                h=dataset.patch_size,
                rank=i,
                reason="uncertain",
                status="open",
            )
            for i, o in enumerate(origins)
        ]
        session.add_all(tasks)
        session.flush()
        return [t.id for t in tasks]
