"""Setting up bench/api_load.py: a scratch PostgreSQL database, a dataset, tasks and tokens,
and the batch replacement it runs in the middle."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np

from server.auth import create_token
from server.datasets.service import grid_of, register_dataset
from server.db.base import make_engine, make_sessionmaker, session_scope
from server.db.tables import AnnotationTask

PATCH = 28  # small patches: 10,000 distinct ones on a 1400 x 1400 x 4 dataset, one task each


def make_database(admin_url: str) -> str:
    import psycopg

    name = f"al_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def write_dataset(path: Path) -> None:
    from server.wklib import wk

    data = np.random.default_rng(0).integers(0, 256, size=(1400, 1400, 4), dtype=np.uint8)
    ds = wk.Dataset(path, voxel_size=(32, 32, 35))
    layer = ds.add_layer("color", wk.COLOR_CATEGORY, dtype="uint8", data_format="zarr3")
    layer.add_mag(1, chunk_shape=(32, 32, 32), shard_shape=(512, 512, 32)).write(
        data, absolute_offset=(0, 0, 0), allow_resize=True
    )


def seed(url: str, dataset_path: Path, *, annotators: int, tasks: int) -> tuple[int, list[str]]:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    try:
        with session_scope(sessions) as session:
            dataset = register_dataset(
                session, name="bench", path=str(dataset_path), patch=PATCH, stats_sample=8
            )
            grid = grid_of(dataset)
            tasks = min(tasks, len(grid))
            origins = grid.origins(np.arange(tasks))
            session.add_all(
                AnnotationTask(
                    dataset_id=dataset.id,
                    kind="proposal",
                    grid_index=i,
                    x=int(origins[i][0]),
                    y=int(origins[i][1]),
                    z=int(origins[i][2]),
                    w=PATCH,
                    h=PATCH,
                    rank=i,
                    reason="uncertain",
                    status="open",
                )
                for i in range(tasks)
            )
            secrets = [
                create_token(session, name=f"annotator-{i:02d}", role="annotator")[1]
                for i in range(annotators)
            ]
            return dataset.id, secrets
    finally:
        engine.dispose()


def replace_half_of_the_batch(url: str, dataset_id: int) -> float:
    from server.annotation.proposals import demote_superseded, replace_proposals
    from server.datasets.service import get_dataset
    from server.db.base import write_transaction

    engine = make_engine(url)
    try:
        t0 = time.perf_counter()
        with write_transaction(make_sessionmaker(engine)) as session:
            dataset = get_dataset(session, dataset_id)
            grid = grid_of(dataset)
            rng = np.random.default_rng(1)
            picks = [
                {"index": int(i), "reason": "uncertain", "score": 1.0}
                for i in rng.permutation(len(grid))[: len(grid) // 2]
            ]
            batch = replace_proposals(
                session, dataset=dataset, grid=grid, model_version_id=None, job_id=None, picks=picks
            )
        with write_transaction(make_sessionmaker(engine)) as session:  # as the propose step does
            demote_superseded(session, dataset_id=dataset_id, first_new_id=batch.first_new_id)
        return time.perf_counter() - t0
    finally:
        engine.dispose()
