"""Pre-labels: the model's view of a proposal (verdict and probability) that the labeling page
can show and an annotator can accept. Never for an audit patch: its labels measure the models,
so they must not lean on them."""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.tables import AnnotationTask, ModelVersion
from server.errors import InvalidInput

DEFAULT_THRESHOLD = 0.5


class PreLabel(NamedTuple):
    label: str  # "artifact" or "clean"
    p_artifact: float
    threshold: float


def prelabel_of(session: Session, task: AnnotationTask) -> PreLabel | None:
    """The model's verdict on the task's patch: its p(artifact) at the threshold of the version
    that scored it (0.5 when that version recorded none). ``None`` for an audit task and for a
    proposal without a score."""
    if task.kind != "proposal" or task.p_artifact is None:
        return None
    threshold = _threshold(session, task.model_version_id)
    p = float(task.p_artifact)
    return PreLabel("artifact" if p >= threshold else "clean", p, threshold)


def check_accepted(session: Session, task: AnnotationTask, *, label: str) -> None:
    """A label sent as an accepted pre-label must be the task's pre-label."""
    found = prelabel_of(session, task)
    if found is None:
        raise InvalidInput(f"task {task.id} has no pre-label to accept")
    if found.label != label:
        raise InvalidInput(f"the pre-label of task {task.id} is {found.label!r}, not {label!r}")


def _threshold(session: Session, version_id: int | None) -> float:
    """A version's decision threshold; a version that scored tasks is ready and never changes,
    so each is read once per process."""
    if version_id is None:
        return DEFAULT_THRESHOLD
    key = (str(session.get_bind().engine.url), version_id)
    known = _thresholds.get(key)
    if known is not None:
        return known
    config = session.scalar(select(ModelVersion.config).where(ModelVersion.id == version_id))
    value = (config or {}).get("threshold")
    threshold = float(value) if isinstance(value, int | float) else DEFAULT_THRESHOLD
    if len(_thresholds) > 10_000:
        _thresholds.clear()
    _thresholds[key] = threshold
    return threshold


_thresholds: dict[tuple[str, int], float] = {}
