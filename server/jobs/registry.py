"""The one registry of job kinds: for each, its queue, its parameters, the step that runs it
and what follows it. A kind's behaviour is found here by name::

    grep -n "JobKind.TRAIN" server/jobs/registry.py   ->  server/pipeline/train.py:run

Handlers are named as ``"module:function"`` and imported only when a worker runs them, so
the API (which only enqueues job ids) never imports training code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from server.errors import InvalidInput
from server.jobs.kinds import JobKind, Queue
from server.jobs.params import (
    AuditParams,
    JobParams,
    PredictChunkParams,
    PredictParams,
    PretrainParams,
    ProposeParams,
    ScoreChunkParams,
    ScoreParams,
    SyncParams,
    TrainParams,
)


@dataclass(frozen=True)
class JobSpec:
    kind: JobKind
    queue: Queue
    params: type[JobParams]
    run: str  # "module:function" (StepContext, Job) -> dict | Chunked
    follows: str | None = None  # "module:function" (StepContext, Job) -> None, after success
    chunks_done: str | None = None  # for a parent of chunk jobs: (StepContext, Job) -> dict
    startable: bool = True  # may a person start it through the API or CLI
    exclusive: bool = False  # one at a time per dataset; new requests coalesce while queued
    check: str | None = None  # "module:function" (Settings, Dataset, dict) -> None, before queueing


REGISTRY: dict[JobKind, JobSpec] = {
    spec.kind: spec
    for spec in (
        JobSpec(
            kind=JobKind.PRETRAIN,
            queue=Queue.GPU,
            params=PretrainParams,
            run="server.pipeline.pretrain:run",
            follows="server.pipeline.pretrain:after",
            exclusive=True,
        ),
        JobSpec(
            kind=JobKind.TRAIN,
            queue=Queue.GPU,
            params=TrainParams,
            run="server.pipeline.train:run",
            follows="server.pipeline.train:after",
            exclusive=True,
        ),
        JobSpec(
            kind=JobKind.SCORE,
            queue=Queue.GPU,
            params=ScoreParams,
            run="server.pipeline.score:run",
            chunks_done="server.pipeline.score:chunks_done",
            follows="server.pipeline.score:after",
        ),
        JobSpec(
            kind=JobKind.SCORE_CHUNK,
            queue=Queue.GPU,
            params=ScoreChunkParams,
            run="server.pipeline.score:run_chunk",
            startable=False,
        ),
        JobSpec(
            kind=JobKind.PROPOSE,
            queue=Queue.IO,
            params=ProposeParams,
            run="server.pipeline.propose:run",
            follows="server.pipeline.propose:after",
        ),
        JobSpec(
            kind=JobKind.PREDICT,
            queue=Queue.GPU,
            params=PredictParams,
            run="server.pipeline.predict:run",
            chunks_done="server.pipeline.predict:chunks_done",
            check="server.pipeline.predict:check",
        ),
        JobSpec(
            kind=JobKind.PREDICT_CHUNK,
            queue=Queue.GPU,
            params=PredictChunkParams,
            run="server.pipeline.predict:run_chunk",
            startable=False,
        ),
        JobSpec(
            kind=JobKind.AUDIT,
            queue=Queue.GPU,
            params=AuditParams,
            run="server.pipeline.audit:run",
            follows="server.pipeline.audit:after",
            exclusive=True,  # never beside a training: both write the versions' audit metrics
        ),
        JobSpec(
            kind=JobKind.SYNC,
            queue=Queue.IO,
            params=SyncParams,
            run="server.pipeline.sync:run",
            check="server.pipeline.sync:check",
        ),
    )
}

STARTABLE_KINDS: tuple[JobKind, ...] = tuple(k for k, s in REGISTRY.items() if s.startable)
EXCLUSIVE_KINDS: tuple[JobKind, ...] = tuple(k for k, s in REGISTRY.items() if s.exclusive)


def spec_of(kind: str) -> JobSpec:
    try:
        return REGISTRY[JobKind(kind)]
    except ValueError:
        raise InvalidInput(
            f"unknown job kind {kind!r}; use one of {', '.join(STARTABLE_KINDS)}"
        ) from None


def resolve(ref: str) -> Any:
    """The function a ``"module:function"`` reference names."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)
