"""A dataset registered by its webKnossos URL is read through the library's Zarr streaming
(HTTP range requests against a local server speaking the datastore's routes), behind the
same reader as a local one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.datasets.service import grid_of, register_dataset
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope
from server.errors import DatasetError
from server.pixels.source import PatchSource
from server.sim.synth import make_synthetic_dataset
from tests.wkserver import serve

TOKEN = "wk-secret-token"
DATASET_ID = "0123456789abcdef01234567"  # webKnossos ids are 24 hex digits


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("remote") / "ds"
    make_synthetic_dataset(path, seed=3, shape=(840, 4))
    return path


def test_remote_patches_equal_local_ones(
    local: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve(TOKEN) as fake:
        fake.add_dataset(DATASET_ID, local)
        monkeypatch.setenv("ARTIFACT_LOOP_WK_URL", fake.url)
        monkeypatch.setenv("ARTIFACT_LOOP_WK_TOKEN", TOKEN)
        url = f"{fake.url}/datasets/synth-{DATASET_ID}/view"
        origins = np.asarray([[0, 0, 0], [140, 280, 1], [700, 700, 3], [35, 560, 2]])
        with PatchSource.open(local) as here, PatchSource.open(url) as there:
            assert there.info.bbox_size == here.info.bbox_size
            assert there.info.voxel_size == here.info.voxel_size
            assert np.array_equal(there.read_patches(origins), here.read_patches(origins))
            assert np.array_equal(
                there.read_region((70, 70, 2), (300, 200)),
                here.read_region((70, 70, 2), (300, 200)),
            )
        assert any(r.startswith("GET /datasets/") for r in fake.state.requests)

        # registered by URL like a local one: the grid, the statistics
        db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
        migrate.upgrade(db_url)
        sessions = make_sessionmaker(make_engine(db_url))
        with session_scope(sessions) as session:
            dataset = register_dataset(session, name="remote", path=url)
            assert dataset.path == url and len(grid_of(dataset)) == 6 * 6 * 4


def test_remote_errors_are_clear(local: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(TOKEN) as fake:
        fake.add_dataset(DATASET_ID, local)
        url = f"{fake.url}/datasets/synth-{DATASET_ID}/view"
        monkeypatch.delenv("ARTIFACT_LOOP_WK_URL", raising=False)
        with pytest.raises(DatasetError, match="set ARTIFACT_LOOP_WK_URL"):
            PatchSource.open(url)
        monkeypatch.setenv("ARTIFACT_LOOP_WK_URL", fake.url)
        monkeypatch.setenv("ARTIFACT_LOOP_WK_TOKEN", "wrong")
        with pytest.raises(DatasetError, match="cannot open webKnossos dataset"):
            PatchSource.open(url)
        monkeypatch.setenv("ARTIFACT_LOOP_WK_TOKEN", TOKEN)
        with pytest.raises(DatasetError, match="not on the configured webKnossos server"):
            PatchSource.open(f"https://elsewhere.example/datasets/x-{DATASET_ID}")
        with pytest.raises(DatasetError, match="cannot open webKnossos dataset"):
            PatchSource.open(f"{fake.url}/datasets/x-ffffffffffffffffffffffff/view")
