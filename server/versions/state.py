"""Model-version status: the only module that writes a version's status.

A version is ``training`` from the moment its step starts (visible at once), ``ready`` when
its weights are recorded, ``failed`` when fitting failed or its worker was lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from server.db.tables import ModelVersion
from server.db.vocabulary import VersionStatus


def new_version(
    session: Session, *, dataset_id: int, kind: str, job_id: int, **fields: Any
) -> ModelVersion:
    """A version in state ``training``, added to the session."""
    version = ModelVersion(
        dataset_id=dataset_id,
        kind=kind,
        status=VersionStatus.TRAINING,
        job_id=job_id,
        config={},
        **fields,
    )
    session.add(version)
    session.flush()
    return version


def mark_ready(version: ModelVersion) -> None:
    version.status = VersionStatus.READY


def mark_failed(session: Session, *, version_id: int) -> None:
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.id == version_id)
        .values(status=VersionStatus.FAILED)
    )


def fail_unfinished(session: Session, *, job_ids: Iterable[int]) -> None:
    """Versions the jobs ``job_ids`` were still training: their worker was lost, they will
    never be finished."""
    session.execute(
        update(ModelVersion)
        .where(
            ModelVersion.job_id.in_(list(job_ids)),
            ModelVersion.status == VersionStatus.TRAINING,
        )
        .values(status=VersionStatus.FAILED)
    )
