"""Recording model versions as a step creates, finishes or abandons them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import update

from server.db.base import write_transaction
from server.db.tables import ModelVersion
from server.pipeline.context import StepContext
from server.versions.service import refresh_active_flags


@dataclass(frozen=True)
class Outcome:
    """What a training step computed: the version's config, metrics and weights file."""

    config: dict[str, Any]
    metrics: dict[str, Any]
    weights_path: Path
    weights_sha256: str


def new_version(ctx: StepContext, *, dataset_id: int, kind: str, job_id: int, **fields: Any) -> int:
    """A version in state ``training``: visible at once, ready only when recorded."""
    with write_transaction(ctx.sessions) as session:
        version = ModelVersion(
            dataset_id=dataset_id, kind=kind, status="training", job_id=job_id, config={}, **fields
        )
        session.add(version)
        session.flush()
        return version.id


def record_version(ctx: StepContext, *, version_id: int, outcome: Outcome) -> None:
    with write_transaction(ctx.sessions) as session:
        version = session.get(ModelVersion, version_id)
        assert version is not None
        version.status = "ready"
        version.config = outcome.config
        version.metrics = outcome.metrics
        version.weights_path = str(outcome.weights_path)
        version.weights_sha256 = outcome.weights_sha256
        refresh_active_flags(session, dataset_id=version.dataset_id)


def abandon_version(ctx: StepContext, *, version_id: int) -> None:
    with write_transaction(ctx.sessions) as session:
        session.execute(
            update(ModelVersion).where(ModelVersion.id == version_id).values(status="failed")
        )
