"""The vocabulary of jobs: kinds, states and queues, each named once."""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    PRETRAIN = "pretrain"
    TRAIN = "train"
    SCORE = "score"
    SCORE_CHUNK = "score_chunk"
    PROPOSE = "propose"
    PREDICT = "predict"
    PREDICT_CHUNK = "predict_chunk"
    SYNC = "sync"
    AUDIT = "audit"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Queue(StrEnum):
    GPU = "gpu"  # models: one job at a time per worker (solo pool, prefetch 1)
    IO = "io"  # bookkeeping: proposals, webKnossos sync


ACTIVE_STATES: tuple[JobState, ...] = (JobState.QUEUED, JobState.RUNNING)
