"""Annotation tasks: lease the next one, label, skip, release."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from server.annotation.tasks import (
    get_task,
    label_task,
    lease_next,
    open_task_count,
    release_task,
    skip_task,
)
from server.api.deps import CurrentUser, DatasetId, PageDep, SessionDep, StateDep, TaskId
from server.api.schemas import LabelOut, LabelTask, NextTask, PageOf, TaskOut
from server.datasets.service import get_dataset
from server.db.base import write_transaction
from server.db.tables import TASK_KINDS, TASK_STATUSES, AnnotationTask
from server.errors import InvalidInput
from server.labels.service import labels_arrived

router = APIRouter(tags=["tasks"])


def task_out(task: AnnotationTask) -> TaskOut:
    out = TaskOut.model_validate(task)
    out.image_url = f"/api/v1/tasks/{task.id}/image.png"
    return out


@router.post(
    "/datasets/{dataset_id}/tasks/next",
    response_model=NextTask,
    summary="Lease the next task to the caller",
    description="The task is reserved for the caller until `lease_expires_at`; label, skip or "
    "release it before then. Two callers never get the same task.",
)
def next_task(dataset_id: DatasetId, state: StateDep, user: CurrentUser) -> NextTask:
    with write_transaction(state.runtime.sessions) as session:
        get_dataset(session, dataset_id)
        task = lease_next(
            session,
            dataset_id=dataset_id,
            annotator=user,
            lease_seconds=state.settings.lease_seconds,
        )
        remaining = open_task_count(session, dataset_id=dataset_id)
        if task is None:
            return NextTask(
                task=None,
                remaining=0,
                message="no tasks left: the model proposes more after the next training",
            )
        return NextTask(task=task_out(task), remaining=remaining)


@router.get(
    "/datasets/{dataset_id}/tasks",
    response_model=PageOf[TaskOut],
    summary="Tasks of a dataset, best-ranked first",
)
def list_tasks(
    dataset_id: DatasetId,
    session: SessionDep,
    page: PageDep,
    _user: CurrentUser,
    status: Annotated[str | None, Query(description="open, leased, labelled, ...")] = None,
    kind: Annotated[str | None, Query(description="proposal or audit")] = None,
) -> PageOf[TaskOut]:
    from sqlalchemy import func

    get_dataset(session, dataset_id)
    if status is not None and status not in TASK_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(TASK_STATUSES)}")
    if kind is not None and kind not in TASK_KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(TASK_KINDS)}")
    stmt = select(AnnotationTask).where(AnnotationTask.dataset_id == dataset_id)
    if status:
        stmt = stmt.where(AnnotationTask.status == status)
    if kind:
        stmt = stmt.where(AnnotationTask.kind == kind)
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = session.scalars(
        stmt.order_by(AnnotationTask.rank, AnnotationTask.id).limit(page.limit).offset(page.offset)
    )
    return PageOf(
        items=[task_out(t) for t in rows], total=total, limit=page.limit, offset=page.offset
    )


@router.get("/tasks/{task_id}", response_model=TaskOut, summary="One task")
def get_one(task_id: TaskId, session: SessionDep, _user: CurrentUser) -> TaskOut:
    return task_out(get_task(session, task_id))


@router.post(
    "/tasks/{task_id}/label",
    response_model=LabelOut,
    summary="Label a task (the caller's verdict)",
    responses={409: {"description": "The task is leased by someone else"}},
)
def label(task_id: TaskId, body: LabelTask, state: StateDep, user: CurrentUser) -> LabelOut:
    if body.artifact_type is not None and body.label != "artifact":
        raise InvalidInput("only artifact labels carry an artifact type")
    with write_transaction(state.runtime.sessions) as session:
        created_label, created = label_task(
            session,
            task_id=task_id,
            annotator=user,
            label=body.label,
            artifact_type=body.artifact_type,
            source=body.source,
            idempotency_key=body.idempotency_key,
        )
        out = LabelOut.model_validate(created_label)
        dataset_id = created_label.dataset_id
    if created:
        labels_arrived(state.runtime, state.sender, dataset_id=dataset_id)
    return out


@router.post("/tasks/{task_id}/skip", response_model=TaskOut, summary="Skip a task")
def skip(task_id: TaskId, state: StateDep, user: CurrentUser) -> TaskOut:
    with write_transaction(state.runtime.sessions) as session:
        return task_out(skip_task(session, task_id=task_id, annotator=user))


@router.post("/tasks/{task_id}/release", response_model=TaskOut, summary="Give a leased task back")
def release(task_id: TaskId, state: StateDep, user: CurrentUser) -> TaskOut:
    with write_transaction(state.runtime.sessions) as session:
        return task_out(release_task(session, task_id=task_id, annotator=user))
