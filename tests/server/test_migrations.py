"""The Alembic head is the ORM schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from server.db import (
    migrate,
    tables,  # noqa: F401
)
from server.db.base import Base, make_engine


def test_head_matches_orm(db_url: str) -> None:
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
        assert diff == [], f"migrations and ORM differ: {diff}"
        assert migrate.current_revision(engine) == migrate.head_revision()
        assert {
            "datasets",
            "labels",
            "annotation_tasks",
            "model_versions",
            "jobs",
            "annotators",
            "api_tokens",
        } <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(db_url: str) -> None:
    migrate.upgrade(db_url)
    migrate.upgrade(db_url, "head")  # idempotent
    from alembic import command

    command.downgrade(migrate.alembic_config(db_url), "base")
    engine = make_engine(db_url)
    try:
        assert "labels" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    migrate.upgrade(db_url)
