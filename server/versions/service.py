"""Model versions: listing, and activation (an admin pins one; unpinning goes back to the
newest successful version)."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from server.db.tables import ModelVersion
from server.errors import Conflict, NotFound
from server.pipeline.loop import refresh_active_flags


def get_version(session: Session, version_id: int) -> ModelVersion:
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise NotFound(f"no model version {version_id}")
    return version


def activate_version(session: Session, *, version_id: int) -> ModelVersion:
    """Make ``version_id`` the active version of its kind (roll back or forward)."""
    version = get_version(session, version_id)
    if version.status != "ready":
        raise Conflict(f"model version {version_id} is {version.status}, not ready")
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.dataset_id == version.dataset_id, ModelVersion.kind == version.kind)
        .values(pinned=False)
    )
    version.pinned = True
    session.flush()
    refresh_active_flags(session, dataset_id=version.dataset_id)
    return version


def unpin(session: Session, *, dataset_id: int, kind: str) -> ModelVersion | None:
    """Follow the newest successful version of ``kind`` again."""
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.dataset_id == dataset_id, ModelVersion.kind == kind)
        .values(pinned=False)
    )
    session.flush()
    refresh_active_flags(session, dataset_id=dataset_id)
    from server.pipeline.loop import active_model

    return active_model(session, dataset_id=dataset_id, kind=kind)
