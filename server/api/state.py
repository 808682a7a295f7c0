"""What the API process holds while it runs: database, job sender and open datasets."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from server.datasets import open_source
from server.db.tables import Dataset
from server.patches import PatchSource
from server.queue import CeleryJobSender, make_celery
from server.runtime import Runtime
from server.settings import Settings

OPEN_SOURCES = 8  # datasets kept open for patch images; opening one costs tens of ms


@dataclass
class AppState:
    runtime: Runtime
    sender: CeleryJobSender
    _sources: OrderedDict[tuple[int, str, str, str], PatchSource] = field(
        default_factory=OrderedDict
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

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

    def close(self) -> None:
        with self._lock:
            for source in self._sources.values():
                source.close()
            self._sources.clear()
        self.runtime.close()
