"""The loop's decisions on a real PostgreSQL database, each test inside one transaction that
is rolled back afterwards (every commit of the code under test becomes a savepoint)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from server.db import migrate
from server.db.base import make_engine
from server.jobs.context import StepContext
from server.jobs.runner import InlineSender
from server.runtime import Runtime
from server.settings import Settings


@pytest.fixture(scope="session")
def decisions_db(pg_server: str) -> Iterator[str]:
    """One migrated database for all decision tests (dropped at the end)."""
    import psycopg

    name = f"al_decisions_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(pg_server, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{pg_server.rsplit('/', 1)[0]}/{name}"
    migrate.upgrade(url)
    try:
        yield url
    finally:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture
def ctx(decisions_db: str, tmp_path: Path) -> Iterator[StepContext]:
    """A step context whose database work is rolled back after the test; jobs it starts
    wait in an in-process queue (``ctx.sender.pending``) instead of running."""
    engine = make_engine(decisions_db)
    connection = engine.connect()
    outer = connection.begin()
    sessions: sessionmaker[Session] = sessionmaker(
        bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    settings = Settings(
        data_dir=tmp_path, database_url=decisions_db, broker_url="filesystem://", retrain_every=3
    )
    try:
        yield StepContext(
            rt=Runtime(settings=settings, engine=engine, sessions=sessions), sender=InlineSender()
        )
    finally:
        outer.rollback()
        connection.close()
        engine.dispose()


@pytest.fixture
def session(ctx: StepContext) -> Iterator[Session]:
    with ctx.sessions() as s:
        yield s
