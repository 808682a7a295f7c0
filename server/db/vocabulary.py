"""The words the schema holds a column to: job kinds and states, task and model-version
statuses. Each a StrEnum, so a member compares and stores as its string.

They live beside the schema, at the bottom of the import graph, because the schema's check
constraints are made from them. Each state has one writer: job state
:mod:`server.jobs.state`, task status :mod:`server.annotation.task_state`, model-version
status :mod:`server.versions.state`.
"""

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


class TaskStatus(StrEnum):
    OPEN = "open"  # in the queue
    LEASED = "leased"  # one annotator holds it until the lease expires
    LABELLED = "labelled"
    SKIPPED = "skipped"  # nothing writes it now; the schema admits it
    EXPIRED = "expired"  # nothing writes it now; the schema admits it
    RETIRED = "retired"  # its batch was replaced before anyone took it


class VersionStatus(StrEnum):
    TRAINING = "training"
    READY = "ready"
    FAILED = "failed"
