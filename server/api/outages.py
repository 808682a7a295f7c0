"""A database or broker that is down answers 503 with ``Retry-After``, logged once per outage.

During an outage every request fails the same way; a traceback per request would flood the
log (tens of MB a minute under load) and hide the one line an operator needs.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("artifact_loop.api")


@dataclass
class _Incident:
    started: float
    last_failure: float
    answered: int = 1


@dataclass
class Outages:
    """Open incidents per dependency (``database``, ``broker``) of this process."""

    quiet_s: float = 5.0  # an incident ends after a success this long after its last failure
    _open: dict[str, _Incident] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def failed(self, what: str, error: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            incident = self._open.get(what)
            if incident is not None:
                incident.last_failure = now
                incident.answered += 1
                return
            self._open[what] = _Incident(started=now, last_failure=now)
        log.warning("%s unreachable (%s): answering 503 until it is back", what, _first_line(error))

    def succeeded(self) -> None:
        """A request succeeded: close incidents whose last failure is long enough ago."""
        if not self._open:
            return
        now = time.monotonic()
        with self._lock:
            closed = [
                (what, incident)
                for what, incident in self._open.items()
                if now - incident.last_failure >= self.quiet_s
            ]
            for what, _ in closed:
                del self._open[what]
        for what, incident in closed:
            log.warning(
                "%s reachable again after %.0f s; %d requests were answered 503",
                what,
                incident.last_failure - incident.started,
                incident.answered,
            )

    def is_open(self, what: str) -> bool:
        return what in self._open


def _first_line(error: BaseException) -> str:
    inner = getattr(error, "orig", None) or error
    text = next((line.strip() for line in str(inner).splitlines() if line.strip()), "")
    return f"{type(inner).__name__}: {text[:200]}" if text else type(inner).__name__
