"""Recording model versions as a step creates, finishes or abandons them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.datasets.service import open_source
from server.db.base import write_transaction
from server.db.tables import Dataset, Job, ModelVersion
from server.jobs.context import StepContext
from server.versions import state
from server.versions.service import model_dir, refresh_active_flags


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
        version = state.new_version(
            session, dataset_id=dataset_id, kind=kind, job_id=job_id, **fields
        )
        return version.id


def record_version(ctx: StepContext, *, version_id: int, outcome: Outcome) -> None:
    with write_transaction(ctx.sessions) as session:
        version = session.get(ModelVersion, version_id)
        assert version is not None
        state.mark_ready(version)
        version.config = outcome.config
        version.metrics = outcome.metrics
        version.weights_path = str(outcome.weights_path)
        version.weights_sha256 = outcome.weights_sha256
        refresh_active_flags(
            session, dataset_id=version.dataset_id, hold_back=ctx.settings.hold_back_worse
        )


def abandon_version(ctx: StepContext, *, version_id: int) -> None:
    with write_transaction(ctx.sessions) as session:
        state.mark_failed(session, version_id=version_id)


def train_version(
    ctx: StepContext,
    job: Job,
    dataset: Dataset,
    *,
    kind: str,
    fit: Callable[..., Outcome],
    **fields: Any,
) -> dict[str, Any]:
    """A new version of ``kind``: visible as ``training`` at once, fitted by
    ``fit(source=..., out_dir=...)``, then recorded ready, or marked failed if fitting fails."""
    version_id = new_version(ctx, dataset_id=dataset.id, kind=kind, job_id=job.id, **fields)
    try:
        with open_source(dataset) as source:
            outcome = fit(
                source=source,
                out_dir=model_dir(ctx.settings, dataset_id=dataset.id, version_id=version_id),
            )
    except BaseException:
        abandon_version(ctx, version_id=version_id)
        raise
    record_version(ctx, version_id=version_id, outcome=outcome)
    return {"model_version_id": version_id, "metrics": outcome.metrics}
