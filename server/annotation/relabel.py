"""Re-label tasks: suspect labels (:class:`~server.db.tables.LabelSuspect`) offered to someone
else for a second look, at the label's exact position, so leasing never offers one to the
annotator who gave the label (:func:`server.annotation.overlap.labelled_by`). When the second
label arrives the position has two, and how several labels become one decides.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.acquisition.relabel import REASON, Suspect
from server.annotation import task_state
from server.db.tables import AnnotationTask, Dataset, Label, LabelSuspect
from server.db.vocabulary import TaskStatus
from server.pixels.grid import Grid

Position = tuple[int, int, int, int, int]


def relabel_candidates(session: Session, *, dataset: Dataset, grid: Grid) -> tuple[Suspect, ...]:
    """The dataset's suspect labels that may be offered again: not at a position labelled by
    two annotators already, nor where a re-label task is taken or another task waits for a
    second annotator."""
    rows = session.execute(
        select(LabelSuspect, Label)
        .join(Label, Label.id == LabelSuspect.label_id)
        .where(LabelSuspect.dataset_id == dataset.id)
        .order_by(LabelSuspect.score.desc(), LabelSuspect.label_id)
    ).all()
    if not rows:
        return ()
    blocked = second_looks(session, dataset_id=dataset.id)
    found: list[Suspect] = []
    for suspect, label in rows:
        position = (label.x, label.y, label.z, label.w, label.h)
        if position in blocked:
            continue
        found.append(
            Suspect(
                label_id=label.id, x=label.x, y=label.y, z=label.z, w=label.w, h=label.h,
                grid_index=grid_index_of(grid, position), score=suspect.score,
                p_artifact=suspect.p_artifact,
            )
        )  # fmt: skip
    return tuple(found)


def second_looks(session: Session, *, dataset_id: int) -> set[Position]:
    """Positions that have, or will get, a second annotator's label: labelled by two or more
    annotators, a re-label task leased or labelled, a task that wants two annotators waiting."""
    position = (Label.x, Label.y, Label.z, Label.w, Label.h)
    twice = session.execute(
        select(*position)
        .where(Label.dataset_id == dataset_id)
        .group_by(*position)
        .having(func.count(func.distinct(Label.annotator)) > 1)
    ).all()
    tasks = session.execute(
        select(AnnotationTask.x, AnnotationTask.y, AnnotationTask.z, AnnotationTask.w,
               AnnotationTask.h)
        .where(
            AnnotationTask.dataset_id == dataset_id,
            ((AnnotationTask.reason == REASON) & AnnotationTask.status.in_(task_state.TAKEN))
            | (
                (AnnotationTask.labels_wanted > 1)
                & AnnotationTask.status.in_((TaskStatus.LEASED, *task_state.WAITING))
            ),
        )
    ).all()  # fmt: skip
    return {tuple(map(int, row)) for row in (*twice, *tasks)}  # type: ignore[misc]


def grid_index_of(grid: Grid, position: Position) -> int | None:
    """The grid patch a label box is exactly, else None (labels need not lie on the grid)."""
    x, y, z, w, h = position
    ex, ey, _ = grid.patch_extent
    if (w, h) != (ex, ey):
        return None
    try:
        return int(grid.indices(np.asarray([[x, y, z]]))[0])
    except ValueError:
        return None


def suspect_page(
    session: Session, *, dataset_id: int, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """The dataset's suspect labels, strongest first, with the model's view and the newest
    re-label task at each label's position (its state, and the second verdict once given)."""
    total = session.scalar(
        select(func.count(LabelSuspect.id)).where(LabelSuspect.dataset_id == dataset_id)
    )
    rows = session.execute(
        select(LabelSuspect, Label)
        .join(Label, Label.id == LabelSuspect.label_id)
        .where(LabelSuspect.dataset_id == dataset_id)
        .order_by(LabelSuspect.score.desc(), LabelSuspect.label_id)
        .limit(limit)
        .offset(offset)
    ).all()
    positions = {(lab.x, lab.y, lab.z, lab.w, lab.h) for _, lab in rows}
    tasks: dict[Position, AnnotationTask] = {}
    if positions:
        for task in session.scalars(
            select(AnnotationTask)
            .where(
                AnnotationTask.dataset_id == dataset_id,
                AnnotationTask.reason == REASON,
                AnnotationTask.z.in_({p[2] for p in positions}),
            )
            .order_by(AnnotationTask.id)
        ):
            key = (task.x, task.y, task.z, task.w, task.h)
            kept = tasks.get(key)
            if key in positions and (
                kept is None
                or task.status != TaskStatus.RETIRED
                or kept.status == TaskStatus.RETIRED
            ):
                tasks[key] = task  # the newest wins, one still in play over a retired one
    second: dict[int, Label] = {}
    if tasks:
        for lab in session.scalars(
            select(Label).where(Label.task_id.in_([t.id for t in tasks.values()]))
        ):
            second[lab.task_id or 0] = lab
    items = []
    for suspect, label in rows:
        found = tasks.get((label.x, label.y, label.z, label.w, label.h))
        again = second.get(found.id) if found is not None else None
        items.append(
            {
                "label_id": label.id,
                "position": {"x": label.x, "y": label.y, "z": label.z, "w": label.w,
                             "h": label.h},
                "annotator": label.annotator,
                "label": label.label,
                "p_artifact": suspect.p_artifact,
                "p_given": suspect.p_given,
                "score": suspect.score,
                "model_version_id": suspect.model_version_id,
                "relabel_task": None if found is None else dict(  # a read, not a write
                    id=found.id, status=found.status,
                    label=None if again is None else again.label,
                    annotator=None if again is None else again.annotator,
                ),
            }
        )  # fmt: skip
    return items, int(total or 0)
