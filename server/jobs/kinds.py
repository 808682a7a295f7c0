"""The vocabulary of jobs: kinds, states and queues, each named once (kinds and states in
:mod:`server.db.vocabulary`, since the schema is held to them)."""

from __future__ import annotations

from enum import StrEnum

from server.db.vocabulary import JobKind, JobState

__all__ = ["ACTIVE_STATES", "JobKind", "JobState", "Queue"]


class Queue(StrEnum):
    GPU = "gpu"  # models: one job at a time per worker (solo pool, prefetch 1)
    IO = "io"  # bookkeeping: proposals, webKnossos sync


ACTIVE_STATES: tuple[JobState, ...] = (JobState.QUEUED, JobState.RUNNING)
