"""What a process (CLI command, API app, worker) needs at run time, made once at its start."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from server.db import migrate
from server.db.base import make_engine, make_sessionmaker
from server.errors import ServiceUnavailable
from server.settings import Settings, get_settings


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]

    @classmethod
    def start(
        cls, settings: Settings | None = None, *, auto_migrate_sqlite: bool = True
    ) -> Runtime:
        """Connect to the database and make sure the schema is current.

        The embedded SQLite database is created and upgraded on the fly; a server database
        must be upgraded explicitly (``artifact-loop db upgrade``) so schema changes stay a
        deliberate step.
        """
        settings = settings or get_settings()
        if settings.is_sqlite:
            settings.ensure_dirs()
        budget = {} if settings.db_pool_size is None else {"pool_size": settings.db_pool_size}
        engine = make_engine(settings.database_url, **budget)
        try:
            current = migrate.current_revision(engine)
        except OperationalError as exc:
            engine.dispose()
            reason = " ".join(str(exc.orig).split())  # psycopg's message spans lines
            raise ServiceUnavailable(f"cannot reach the database: {reason}") from None
        head = migrate.head_revision()
        if current != head:
            if settings.is_sqlite and auto_migrate_sqlite:
                migrate.upgrade(settings.database_url)
            else:
                engine.dispose()
                raise ServiceUnavailable(
                    f"database schema is at {current or 'nothing'}, expected {head}: "
                    "run `artifact-loop db upgrade`"
                )
        return cls(settings=settings, engine=engine, sessions=make_sessionmaker(engine))

    def close(self) -> None:
        self.engine.dispose()
