"""What the API process holds while it runs: database, job sender and open datasets."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from sqlalchemy.exc import OperationalError

from server.auth import authenticate, hash_token
from server.datasets.service import open_source
from server.db.tables import Annotator, Dataset
from server.jobs.queue import CeleryJobSender, make_celery
from server.pixels.source import PatchSource
from server.runtime import Runtime
from server.settings import Settings

OPEN_SOURCES = 8  # datasets kept open for patch images; opening one costs tens of ms
# A token's owner is remembered this long, so a request costs no authentication query; a
# revoked token stops working within this time.
AUTH_CACHE_SECONDS = 30.0


@dataclass
class AppState:
    runtime: Runtime
    sender: CeleryJobSender
    _sources: OrderedDict[tuple[int, str, str, str], PatchSource] = field(
        default_factory=OrderedDict
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _callers: dict[str, tuple[float, Annotator]] = field(default_factory=dict)

    @classmethod
    def start(cls, settings: Settings) -> AppState:
        runtime = Runtime.start(settings)
        celery = make_celery(settings)
        return cls(
            runtime=runtime, sender=CeleryJobSender(celery, expires_s=settings.task_expires_s)
        )

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    def source(self, dataset: Dataset) -> PatchSource:
        """An open reader for ``dataset``, shared between requests."""
        key = (dataset.id, dataset.path, dataset.layer, dataset.mag)
        with self._lock:
            found = self._sources.get(key)
            if found is not None:
                self._sources.move_to_end(key)
                return found
        opened = open_source(dataset)
        with self._lock:
            self._sources[key] = opened
            while len(self._sources) > OPEN_SOURCES:
                _, old = self._sources.popitem(last=False)
                old.close()
        return opened

    def cached_caller(self, secret: str | None) -> Annotator | None:
        """The annotator a token belongs to if it was authenticated lately; ``None`` when
        that needs the database (:meth:`caller`). Cheap enough for the event loop."""
        cached = self._callers.get(hash_token(secret) if secret else "")
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        return None

    def caller(self, secret: str | None) -> Annotator:
        """The annotator a token belongs to (raises Unauthorized)."""
        key = hash_token(secret) if secret else ""
        now = time.monotonic()
        cached = self._callers.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        with self.runtime.sessions() as session:
            annotator = authenticate(session, secret)
            session.expunge(annotator)
            try:
                session.commit()  # the token's last use, when it is old enough to record
            except OperationalError:
                # SQLite while another process writes: the read cannot become a write now.
                # The last-use time is advisory; the request must not fail for it.
                session.rollback()
        if len(self._callers) > 10_000:
            self._callers.clear()
        self._callers[key] = (now + AUTH_CACHE_SECONDS, annotator)
        return annotator

    def close(self) -> None:
        with self._lock:
            for source in self._sources.values():
                source.close()
            self._sources.clear()
        self.runtime.close()
