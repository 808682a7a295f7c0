"""The review list: patches annotators flagged unsure, who flagged them and when, who labelled
them since, and an admin's mark that the second look is done."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from server.annotation.tasks import get_task
from server.db.base import utcnow
from server.db.tables import AnnotationTask, Annotator, Label, TaskSkip


def kept_for_review() -> ColumnElement[bool]:
    """Tasks a new batch must not retire: flagged unsure and not resolved yet. They stay in
    the queue (behind the new batch) until someone labels them or an admin resolves them."""
    return AnnotationTask.resolved_at.is_(None) & exists(
        select(TaskSkip.id).where(TaskSkip.task_id == AnnotationTask.id, TaskSkip.unsure.is_(True))
    )


def review_details(session: Session, *, task_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Per task: who flagged it unsure and when, its labels (who, what, when), who resolved."""
    out: dict[int, dict[str, Any]] = {
        i: {"flagged_by": [], "labels": [], "resolved_by": None} for i in task_ids
    }
    if not task_ids:
        return out
    flags = session.execute(
        select(TaskSkip.task_id, Annotator.name, TaskSkip.created_at)
        .join(Annotator, Annotator.id == TaskSkip.annotator_id)
        .where(TaskSkip.task_id.in_(task_ids), TaskSkip.unsure.is_(True))
        .order_by(TaskSkip.created_at)
    )
    for task_id, name, at in flags:
        out[task_id]["flagged_by"].append({"annotator": name, "at": at})
    labels = session.execute(
        select(Label.task_id, Label.annotator, Label.label, Label.artifact_type, Label.created_at)
        .where(Label.task_id.in_(task_ids))
        .order_by(Label.id)
    )
    for labelled_task, name, verdict, kind, at in labels:
        if labelled_task is None:  # never: the query asks for these tasks' labels
            continue
        out[labelled_task]["labels"].append(
            {"annotator": name, "label": verdict, "artifact_type": kind, "at": at}
        )
    resolved = session.execute(
        select(AnnotationTask.id, Annotator.name)
        .join(Annotator, Annotator.id == AnnotationTask.resolved_by_id)
        .where(AnnotationTask.id.in_(task_ids))
    )
    for task_id, name in resolved:
        out[task_id]["resolved_by"] = name
    return out


def resolve_task(
    session: Session, *, task_id: int, annotator: Annotator, resolved: bool = True
) -> AnnotationTask:
    """Mark a flagged patch as looked at (``resolved=False`` takes the mark back). A resolved
    task that nobody labelled leaves the queue with the next batch."""
    task = get_task(session, task_id, lock=True)
    task.resolved_by_id = annotator.id if resolved else None
    task.resolved_at = utcnow() if resolved else None
    session.flush()
    return task
