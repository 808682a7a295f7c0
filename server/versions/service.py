"""Model versions: which one is active, activation (an admin pins one; unpinning goes back
to the automatic choice), and where their files live.

The automatic choice: the newest ready autoencoder; for classifiers, each new ready version
replaces the one active before it unless it is worse on the audit set beyond its bootstrap
interval (then it is kept, flagged as held back, and an admin may still activate it); versions
measured on the same audit patches are compared by the paired interval of their difference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models.metrics import report_not_measured
from server.db.tables import ModelVersion
from server.db.vocabulary import VersionStatus
from server.errors import Conflict, NotFound
from server.settings import Settings

# Audit metrics the rule compares; a version must not be worse on any of them.
COMPARED_METRICS = ("pr_auc", "f1")


def held_back_reason(candidate: ModelVersion, incumbent: ModelVersion) -> str | None:
    """Why ``candidate`` must not replace ``incumbent`` automatically, or ``None``.

    Both measured on the same audit patches (``audit.paired``): held back when the paired
    95% interval of the difference lies wholly below zero for a compared metric. A candidate
    not yet measured on the audit set that the incumbent was measured on waits. Older
    metrics without pairs: the incumbent's value above the upper end of the candidate's
    interval. Versions without audit metrics, or below the minimum of artifacts, are not
    compared."""
    new = (candidate.metrics or {}).get("audit") or {}
    old = (incumbent.metrics or {}).get("audit") or {}
    paired = (new.get("paired") or {}).get(str(incumbent.id))
    if paired is not None:
        return _paired_reason(paired, incumbent_id=incumbent.id)
    if "audit_set" in old and "audit_set" not in new:
        return "not yet measured on the current audit set"
    if not (_measured(new) and _measured(old)):
        return None
    for name in COMPARED_METRICS:
        value, before = new.get(name), old.get(name)
        if value is None or before is None:
            continue
        interval = (new.get("intervals") or {}).get(name)
        upper = float(interval[1]) if interval and interval[1] is not None else float(value)
        if float(before) > upper:
            return (
                f"audit {name} {float(value):.3f} (95% interval up to {upper:.3f}) is below "
                f"{float(before):.3f} of version {incumbent.id}"
            )
    return None


def _paired_reason(paired: dict[str, Any], *, incumbent_id: int) -> str | None:
    if paired.get("reason"):
        return None  # too few audit artifacts to tell them apart
    for name in COMPARED_METRICS:
        found = paired.get(name)
        if not found:
            continue
        lo, hi = found["interval"]
        if hi < 0:
            return (
                f"audit {name} {found['difference']:+.3f} against version {incumbent_id} "
                f"(paired 95% interval {lo:+.3f} to {hi:+.3f}) on the same "
                f"{paired.get('patches')} audit patches ({paired.get('artifacts')} artifacts)"
            )
    return None


def _measured(audit: dict[str, object]) -> bool:
    """An audit set with at least the minimum of artifacts and of clean patches: below it,
    values are no measurement (older metrics without the counts are taken as measured)."""
    if audit.get("not_measured"):
        return False
    if audit.get("positives") is None:
        return True
    return report_not_measured(audit) is None


def _automatic_choice(
    session: Session, *, dataset_id: int, kind: str, hold_back: bool = True
) -> tuple[ModelVersion | None, dict[int, str]]:
    ready = list(
        session.scalars(
            select(ModelVersion)
            .where(
                ModelVersion.dataset_id == dataset_id,
                ModelVersion.kind == kind,
                ModelVersion.status == VersionStatus.READY,
            )
            .order_by(ModelVersion.id)
        )
    )
    if kind != "classifier" or not hold_back:
        return (ready[-1] if ready else None), {}
    chosen: ModelVersion | None = None
    held: dict[int, str] = {}
    for version in ready:  # in the order they were made: each meets the one active then
        reason = held_back_reason(version, chosen) if chosen is not None else None
        if reason is None:
            chosen = version
        else:
            held[version.id] = reason
    return chosen, held


def held_back_versions(
    session: Session, *, dataset_id: int, kind: str, hold_back: bool = True
) -> dict[int, str]:
    """Ready versions the automatic choice passed over, with the reason."""
    return _automatic_choice(session, dataset_id=dataset_id, kind=kind, hold_back=hold_back)[1]


def active_model(
    session: Session, *, dataset_id: int, kind: str, hold_back: bool = True
) -> ModelVersion | None:
    """The pinned version of that kind if an admin pinned one, else the automatic choice
    (with ``hold_back`` off: the newest ready version)."""
    pinned = session.scalar(
        select(ModelVersion)
        .where(
            ModelVersion.dataset_id == dataset_id,
            ModelVersion.kind == kind,
            ModelVersion.status == VersionStatus.READY,
            ModelVersion.pinned.is_(True),
        )
        .order_by(ModelVersion.id.desc())
    )
    if pinned is not None:
        return pinned
    return _automatic_choice(session, dataset_id=dataset_id, kind=kind, hold_back=hold_back)[0]


def refresh_active_flags(session: Session, *, dataset_id: int, hold_back: bool = True) -> None:
    for kind in ("ae", "classifier"):
        chosen = active_model(session, dataset_id=dataset_id, kind=kind, hold_back=hold_back)
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
    if version.status != VersionStatus.READY:
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
    """Follow the automatic choice of ``kind`` again."""
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.dataset_id == dataset_id, ModelVersion.kind == kind)
        .values(pinned=False)
    )
    session.flush()
    refresh_active_flags(session, dataset_id=dataset_id)
    return active_model(session, dataset_id=dataset_id, kind=kind)
