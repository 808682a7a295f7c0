"""Model versions: which one is active, activation (an admin pins one; unpinning goes back
to the newest successful version), and where their files live."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.db.tables import ModelVersion
from server.errors import Conflict, NotFound
from server.settings import Settings


def active_model(session: Session, *, dataset_id: int, kind: str) -> ModelVersion | None:
    """The pinned version of that kind if an admin pinned one, else the newest ready one."""
    versions = select(ModelVersion).where(
        ModelVersion.dataset_id == dataset_id,
        ModelVersion.kind == kind,
        ModelVersion.status == "ready",
    )
    pinned = session.scalar(
        versions.where(ModelVersion.pinned.is_(True)).order_by(ModelVersion.id.desc())
    )
    if pinned is not None:
        return pinned
    return session.scalar(versions.order_by(ModelVersion.id.desc()))


def refresh_active_flags(session: Session, *, dataset_id: int) -> None:
    for kind in ("ae", "classifier"):
        chosen = active_model(session, dataset_id=dataset_id, kind=kind)
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.dataset_id == dataset_id, ModelVersion.kind == kind)
            .values(active=False)
        )
        if chosen is not None:
            chosen.active = True
    session.flush()


def model_dir(settings: Settings, *, dataset_id: int, version_id: int) -> Path:
    """The folder of one version's weights and score arrays (made when missing)."""
    path = settings.model_store / f"dataset-{dataset_id}" / f"version-{version_id}"
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    return active_model(session, dataset_id=dataset_id, kind=kind)
