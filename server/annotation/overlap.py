"""Overlap: which tasks go to a second annotator, so agreement is measured as the loop runs.

Every audit patch and a seeded share of the proposals (the dataset's ``overlap_share``
setting) want labels from two distinct annotators; the rest from one. A task that wants
another annotator goes back to the queue after a label, and leasing never offers a patch to
someone who labelled it already (:func:`labelled_by`).
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.orm import Session

from server.db.tables import AnnotationTask, Dataset, Label
from server.errors import InvalidInput

DEFAULT_OVERLAP_SHARE = 0.05
AUDIT_LABELS_WANTED = 2
OVERLAP_LABELS_WANTED = 2


def overlap_share(dataset: Dataset) -> float:
    """The dataset's ``overlap_share`` setting (0 to 1), or the default."""
    value = (dataset.settings or {}).get("overlap_share", DEFAULT_OVERLAP_SHARE)
    return check_share(value)


def check_share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidInput(f"overlap_share must be a number from 0 to 1, not {value!r}")
    return float(value)


def proposal_labels_wanted(*, dataset_id: int, grid_index: int, share: float) -> int:
    """How many annotators a proposal of the patch wants: the same answer every time for the
    same patch (a hash of dataset and grid index, uniform in [0, 1), below ``share``)."""
    if share <= 0:
        return 1
    digest = hashlib.blake2b(f"overlap:{dataset_id}:{grid_index}".encode(), digest_size=8)
    draw = int.from_bytes(digest.digest(), "big") / 2**64
    return OVERLAP_LABELS_WANTED if draw < share else 1


def labelled_by(annotator_id: Any, task: Any = AnnotationTask) -> ColumnElement[bool]:
    """Whether annotator ``annotator_id`` (a value or a bound parameter) labelled the task's
    patch position, through this task or any other (``task``: the mapped class or a table)."""
    c = task.c if hasattr(task, "c") else task
    return exists(
        select(Label.id).where(
            Label.dataset_id == c.dataset_id,
            Label.z == c.z,
            Label.y == c.y,
            Label.x == c.x,
            Label.w == c.w,
            Label.h == c.h,
            Label.annotator_id == annotator_id,
        )
    )


def half_done() -> ColumnElement[bool]:
    """Tasks that want another annotator and have a label already: a new batch keeps them
    where they are (neither retired nor moved back), so the first label gets its partner."""
    return (AnnotationTask.labels_wanted > 1) & exists(
        select(Label.id).where(Label.task_id == AnnotationTask.id)
    )


def annotators_of(session: Session, *, task_id: int) -> int:
    """Distinct annotators who labelled the task."""
    found = session.scalar(
        select(func.count(func.distinct(Label.annotator))).where(Label.task_id == task_id)
    )
    return int(found or 0)
