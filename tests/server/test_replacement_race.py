"""Batch replacements of one dataset run one after the other, and the database keeps a patch
in play (open or leased) in at most one batch: two proposes racing on PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from server.annotation.proposals import replace_proposals
from server.datasets.service import get_dataset, grid_of, register_dataset
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope, write_transaction
from server.db.tables import AnnotationTask, Dataset
from tests import factories
from tests.conftest import write_test_dataset


def _picks(indices: range, reason: str) -> list[dict[str, object]]:
    return [{"index": i, "reason": reason, "score": 1.0} for i in indices]


def _replace(
    sessions: sessionmaker[Session],
    dataset_id: int,
    picks: list[dict[str, object]],
    *,
    hold_s: float = 0.0,
    replaced: threading.Event | None = None,
) -> None:
    with write_transaction(sessions) as session:
        dataset = get_dataset(session, dataset_id)
        replace_proposals(
            session,
            dataset=dataset,
            grid=grid_of(dataset),
            model_version_id=None,
            job_id=None,
            picks=picks,
        )
        if replaced is not None:
            replaced.set()
        time.sleep(hold_s)  # a big batch on a busy server takes its time to commit


def _in_play(sessions: sessionmaker[Session], dataset_id: int) -> list[tuple[int | None, str]]:
    with session_scope(sessions) as session:
        return [
            (i, reason)
            for i, reason in session.execute(
                select(AnnotationTask.grid_index, AnnotationTask.reason).where(
                    AnnotationTask.dataset_id == dataset_id,
                    AnnotationTask.kind == "proposal",
                    AnnotationTask.status.in_(("open", "leased")),
                )
            )
        ]


@pytest.mark.postgres
def test_two_replacements_racing_leave_one_batch_open(pg_url: str, tmp_path: Path) -> None:
    migrate.upgrade(pg_url)
    write_test_dataset(tmp_path / "ds", shape=(1400, 1400, 2))
    engine = make_engine(pg_url)
    sessions = make_sessionmaker(engine)
    try:
        with session_scope(sessions) as session:
            dataset_id = register_dataset(session, name="race", path=str(tmp_path / "ds")).id
        _replace(sessions, dataset_id, _picks(range(0, 60), "first"))
        a_replaced = threading.Event()
        failures: list[BaseException] = []

        def propose(picks: list[dict[str, object]], **kwargs: object) -> None:
            try:
                _replace(sessions, dataset_id, picks, **kwargs)  # type: ignore[arg-type]
            except BaseException as exc:  # reported below
                failures.append(exc)

        # A retires the first batch and adds its own, then holds its transaction open; B
        # starts meanwhile, its picks overlapping A's batch and the first one
        a = threading.Thread(
            target=propose, args=(_picks(range(40, 120), "a"),),
            kwargs={"hold_s": 1.5, "replaced": a_replaced},
        )  # fmt: skip
        b = threading.Thread(target=propose, args=(_picks(range(80, 160), "b"),))
        a.start()
        assert a_replaced.wait(timeout=60)
        b.start()
        a.join(timeout=60)
        b.join(timeout=60)
        assert not failures, failures
        in_play = _in_play(sessions, dataset_id)
        twice = [i for i, n in Counter(i for i, _ in in_play).items() if n > 1]
        assert twice == [], f"{len(twice)} patches in play in two batches"
        assert {reason for _, reason in in_play} == {"b"}, Counter(r for _, r in in_play)
        assert len(in_play) == 80
    finally:
        engine.dispose()


def test_the_database_refuses_a_patch_in_play_twice(db_url: str) -> None:
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    try:
        with session_scope(sessions) as session:
            ds = factories.dataset(session)
            factories.task(session, ds, grid_index=3)
            factories.task(session, ds, grid_index=3, status="retired")
            factories.task(session, ds, grid_index=3, kind="audit")
        with pytest.raises(IntegrityError), session_scope(sessions) as session:
            again = session.get(Dataset, ds.id)
            assert again is not None
            factories.task(session, again, grid_index=3, status="leased")
    finally:
        engine.dispose()


def test_the_migration_retires_duplicates_it_finds(sqlite_url: str) -> None:
    migrate.upgrade(sqlite_url, "0004")
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    try:
        with session_scope(sessions) as session:
            ds = factories.dataset(session)
            # rows as revision 0004 has them: only its columns (later ones add more)
            columns = ("dataset_id", "kind", "grid_index", "x", "y", "z", "w", "h", "rank")
            columns += ("reason", "status", "updated_at", "created_at")
            ids = tuple(
                session.execute(
                    text(
                        f"INSERT INTO annotation_tasks ({', '.join(columns)}) VALUES "
                        f"(:ds, 'proposal', :g, 0, 0, 0, 140, 140, :g, 'test', :status, "
                        "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP) RETURNING id"
                    ),
                    {"ds": ds.id, "g": grid, "status": status},
                ).scalar_one()
                for grid, status in ((1, "open"), (1, "open"), (2, "leased"), (2, "open"))
            )
        command.upgrade(migrate.alembic_config(sqlite_url), "head")
        with session_scope(sessions) as session:
            status = dict(
                session.execute(
                    select(AnnotationTask.id, AnnotationTask.status).where(
                        AnnotationTask.id.in_(ids)
                    )
                ).all()
            )
        assert [status[i] for i in ids] == ["retired", "open", "leased", "retired"]
    finally:
        engine.dispose()
