"""Declarative base, engine and session factories.

Engines are made by :func:`make_engine` when a command or the app starts, never at import.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, MetaData, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

log = logging.getLogger("artifact_loop.db")

# Writers wait for each other on SQLite up to this long; normal work never comes close.
SQLITE_BUSY_TIMEOUT_S = 30
SLOW_WRITE_S = 2.0  # a write transaction longer than this is logged (SQLite)
# Requests an API worker process runs at once in its thread pool (each holds at most one
# database connection). More threads than this only wait on each other for the interpreter.
API_THREADS = 24
# The connection budget of a process (API worker, Celery worker, CLI): at most this many
# PostgreSQL connections, kept open once made; a request or job beyond it waits for one.
# Two stacks of docker-compose.yml fit PostgreSQL's default max_connections=100 (97 for
# users): per stack 2 API processes x 12, and workers that use a few each (a job, its
# heartbeat, the reaper), about 32 in all (README: connection budget).
POOL_SIZE = 12
# A pooled PostgreSQL connection that sat idle this long is tested with a round trip before
# it is handed out (a restarted server leaves the pool holding dead connections). One in
# steady use is not: testing every checkout cost a round trip and about 8% of the API's CPU
# per request under load, and a connection that dies in use fails its request, which then
# answers 503 while the pool replaces the connections made before the failure.
PING_IF_IDLE_S = 2.0

# Driver errors that mean "the database cannot answer now", not "the request is wrong".
DATABASE_DOWN: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    DisconnectionError,
    sa_exc.TimeoutError,  # no pooled connection came free in time
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.removeprefix("postgres://")
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, issue BEGIN, so "BEGIN IMMEDIATE" takes the write lock.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            immediate = conn.get_execution_options().get("sqlite_immediate", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    # a stopped server refuses at once; an unreachable one must not hang a request for minutes
    kwargs.setdefault("connect_args", {"connect_timeout": 5})
    # no overflow: connections beyond pool_size are closed when returned, and under load a
    # pool smaller than the API's thread pool reconnected many times a second (a new
    # PostgreSQL connection costs milliseconds of CPU on both sides); past the budget,
    # requests wait for a pooled connection instead
    kwargs.setdefault("pool_size", POOL_SIZE)
    kwargs.setdefault("max_overflow", 0)
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """Before a connection idle for :data:`PING_IF_IDLE_S` or more is handed out, a round
    trip checks it; a dead one is replaced (the pool retries the checkout)."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_IF_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"an idle pooled connection is gone: {exc}") from exc


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def committed(session: Session) -> Iterator[Session]:
    """``session``, committed when the block succeeds, rolled back when it fails, closed."""
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with committed(factory()) as session:
        yield session


@contextmanager
def write_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """Like :func:`session_scope`, but on SQLite the transaction takes the write lock at
    BEGIN (``BEGIN IMMEDIATE``), so read-then-write sequences such as leasing cannot race.

    SQLite has one writer at a time: everyone else waits (up to the busy timeout) while
    this runs, so keep the work inside short: compute first, then write. A write
    transaction that held the lock for long is logged with where it was opened.
    """
    session = factory()
    sqlite = session.get_bind().dialect.name == "sqlite"
    if sqlite:
        session.connection(execution_options={"sqlite_immediate": True})
    started = time.monotonic()
    try:
        with committed(session):
            yield session
    finally:
        held = time.monotonic() - started
        if sqlite and held > SLOW_WRITE_S:
            caller = traceback.extract_stack(limit=3)[0]
            log.warning(
                "a write transaction held the SQLite write lock for %.1f s (%s:%d); "
                "requests that write waited meanwhile",
                held,
                caller.filename,
                caller.lineno,
            )
