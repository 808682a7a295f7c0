"""Annotation tasks: lease the next one, label, skip (and take a skip back), release, the
review list of unsure patches and the labelling progress."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import select

from server.annotation.leasing import lease_next, open_task_count
from server.annotation.overlap import overlap_share
from server.annotation.prelabel import PreLabel, prelabel_of
from server.annotation.progress import labelling_progress
from server.annotation.review import resolve_task, review_details
from server.annotation.tasks import (
    get_task,
    label_task,
    release_task,
    review_list,
    skip_task,
    undo_skip,
)
from server.api.deps import (
    AdminUser,
    CurrentUser,
    DatasetId,
    PageDep,
    SessionDep,
    StateDep,
    TaskId,
    json_response,
)
from server.api.schemas import (
    LabellingProgress,
    LabelOut,
    LabelTask,
    NextTask,
    OverlapSetting,
    PageOf,
    PreLabelOut,
    ResolveTask,
    ReviewTaskOut,
    SkipTask,
    TaskOut,
)
from server.datasets.service import get_dataset
from server.db.base import write_transaction
from server.db.tables import TASK_KINDS, TASK_STATUSES, AnnotationTask, Dataset
from server.errors import Forbidden, InvalidInput
from server.labels.rows import check_artifact_type
from server.labels.service import audit_labels_arrived, labels_arrived
from server.webknossos.links import position_url

router = APIRouter(tags=["tasks"])


def task_out(
    task: AnnotationTask,
    *,
    dataset: Dataset | None = None,
    server: str | None = None,
    blind: bool = False,
    prelabel: PreLabel | None = None,
) -> TaskOut:
    """``blind``: as an annotator is handed it, an audit patch like any other (it is a random
    pick), so nobody knows which answers measure the models: no queue rank, no count of
    annotators wanted, and the model's view only as the ``prelabel`` of a scored proposal."""
    out = TaskOut.model_validate(task)
    if blind:
        if task.kind == "audit":
            out.kind, out.reason = "proposal", "random"
        out.model_version_id = out.p_artifact = out.uncertainty = None
        out.recon_error = out.score = out.rank = out.labels_wanted = None
    if prelabel is not None and task.kind == "proposal":
        out.prelabel = PreLabelOut(**prelabel._asdict())
    out.image_url = f"/api/v1/tasks/{task.id}/image.png"
    if dataset is not None:
        out.webknossos_url = position_url(
            dataset, server=server, x=task.x, y=task.y, z=task.z, w=task.w, h=task.h
        )
    return out


@router.post(
    "/datasets/{dataset_id}/tasks/next",
    response_model=NextTask,
    summary="Lease the next task to the caller",
    description="The task is reserved for the caller until `lease_expires_at`; label, skip or "
    "release it before then. Two callers never get the same task.",
)
def next_task(dataset_id: DatasetId, state: StateDep, user: CurrentUser) -> Response:
    with write_transaction(state.runtime.sessions) as session:
        leased = lease_next(
            session,
            dataset_id=dataset_id,
            annotator=user,
            lease_seconds=state.settings.lease_seconds,
        )
        if leased is None:
            get_dataset(session, dataset_id)  # 404 for a dataset that does not exist
            return json_response(
                NextTask(
                    task=None,
                    remaining=0,
                    message="no tasks left: the model proposes more after the next training",
                )
            )
        task, dataset = leased
        return json_response(
            NextTask(
                task=task_out(
                    task,
                    dataset=dataset,
                    server=state.settings.wk_url,
                    blind=True,
                    prelabel=prelabel_of(session, task),
                ),
                remaining=open_task_count(session, dataset_id=dataset_id),
            )
        )


@router.get(
    "/datasets/{dataset_id}/tasks",
    response_model=PageOf[TaskOut],
    summary="Tasks of a dataset, best-ranked first",
)
def list_tasks(
    dataset_id: DatasetId,
    session: SessionDep,
    state: StateDep,
    page: PageDep,
    user: CurrentUser,
    status: Annotated[str | None, Query(description="open, leased, labelled, ...")] = None,
    kind: Annotated[
        str | None, Query(description="proposal or audit (admins only: annotators see all alike)")
    ] = None,
) -> PageOf[TaskOut]:
    dataset = get_dataset(session, dataset_id)
    # annotators see tasks as they are handed out: nobody tells an audit patch from another
    blind = user.role != "admin"
    if blind and kind is not None:
        raise Forbidden("only admins list tasks by kind: to annotators every task looks alike")
    if status is not None and status not in TASK_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(TASK_STATUSES)}")
    if kind is not None and kind not in TASK_KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(TASK_KINDS)}")
    stmt = select(AnnotationTask).where(AnnotationTask.dataset_id == dataset_id)
    if status:
        stmt = stmt.where(AnnotationTask.status == status)
    if kind:
        stmt = stmt.where(AnnotationTask.kind == kind)
    rows, total = page.rows(session, stmt, order_by=(AnnotationTask.rank, AnnotationTask.id))
    return PageOf(
        items=[
            task_out(t, dataset=dataset, server=state.settings.wk_url, blind=blind) for t in rows
        ],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get(
    "/datasets/{dataset_id}/tasks/review",
    response_model=PageOf[ReviewTaskOut],
    summary="Patches annotators flagged as unsure, for a second look",
)
def list_review(
    dataset_id: DatasetId, session: SessionDep, state: StateDep, page: PageDep, _user: CurrentUser
) -> PageOf[ReviewTaskOut]:
    dataset = get_dataset(session, dataset_id)
    rows, total = review_list(session, dataset_id=dataset_id, limit=page.limit, offset=page.offset)
    details = review_details(session, task_ids=[t.id for t, _ in rows])
    items = [
        ReviewTaskOut(
            **task_out(t, dataset=dataset, server=state.settings.wk_url).model_dump(),
            unsure_flags=flags,
            resolved_at=t.resolved_at,
            **details[t.id],
        )
        for t, flags in rows
    ]
    return PageOf(items=items, total=total, limit=page.limit, offset=page.offset)


@router.post(
    "/tasks/{task_id}/resolve",
    response_model=TaskOut,
    summary="Mark a patch of the review list as looked at (admin)",
    description="Label it first (`POST /tasks/{id}/label`) if it needs a verdict. A resolved "
    "patch leaves the review list's open part and, unlabelled, the queue with the next batch.",
)
def resolve(
    task_id: TaskId, state: StateDep, user: AdminUser, body: ResolveTask | None = None
) -> TaskOut:
    with write_transaction(state.runtime.sessions) as session:
        task = resolve_task(
            session, task_id=task_id, annotator=user, resolved=body.resolved if body else True
        )
        return task_out(task)


@router.get(
    "/datasets/{dataset_id}/overlap",
    response_model=OverlapSetting,
    summary="Share of new proposals that go to a second annotator",
)
def get_overlap(dataset_id: DatasetId, session: SessionDep, _user: CurrentUser) -> OverlapSetting:
    return OverlapSetting(overlap_share=overlap_share(get_dataset(session, dataset_id)))


@router.put(
    "/datasets/{dataset_id}/overlap",
    response_model=OverlapSetting,
    summary="Set the share of new proposals that go to a second annotator (admin)",
    description="Applies from the next batch of proposals on; tasks already made keep theirs.",
)
def set_overlap(
    dataset_id: DatasetId, body: OverlapSetting, state: StateDep, _user: AdminUser
) -> OverlapSetting:
    with write_transaction(state.runtime.sessions) as session:
        dataset = get_dataset(session, dataset_id)
        dataset.settings = {**(dataset.settings or {}), "overlap_share": body.overlap_share}
    return body


@router.get(
    "/datasets/{dataset_id}/progress",
    response_model=LabellingProgress,
    summary="Labelling progress: the caller's rate, labels until the next training, training",
)
def progress(
    dataset_id: DatasetId, session: SessionDep, state: StateDep, user: CurrentUser
) -> LabellingProgress:
    get_dataset(session, dataset_id)
    return LabellingProgress.model_validate(
        labelling_progress(
            session,
            dataset_id=dataset_id,
            annotator=user,
            retrain_every=state.settings.retrain_every,
        )
    )


@router.get("/tasks/{task_id}", response_model=TaskOut, summary="One task")
def get_one(task_id: TaskId, session: SessionDep, state: StateDep, user: CurrentUser) -> TaskOut:
    task = get_task(session, task_id)
    dataset = get_dataset(session, task.dataset_id)
    return task_out(
        task,
        dataset=dataset,
        server=state.settings.wk_url,
        blind=user.role != "admin",
        prelabel=prelabel_of(session, task),
    )


@router.post(
    "/tasks/{task_id}/label",
    response_model=LabelOut,
    summary="Label a task (the caller's verdict)",
    responses={409: {"description": "The task is leased by someone else"}},
)
def label(task_id: TaskId, body: LabelTask, state: StateDep, user: CurrentUser) -> Response:
    check_artifact_type(label=body.label, artifact_type=body.artifact_type)
    with write_transaction(state.runtime.sessions) as session:
        labelled = label_task(
            session,
            task_id=task_id,
            annotator=user,
            label=body.label,
            artifact_type=body.artifact_type,
            source=body.source,
            idempotency_key=body.idempotency_key,
            ask_training=True,
            from_prelabel=body.from_prelabel,
        )
        out = LabelOut.model_validate(labelled.label)
        dataset_id = labelled.label.dataset_id
        may_start = labelled.training_may_start
    if may_start:
        labels_arrived(state.runtime, state.sender, dataset_id=dataset_id, may_start=True)
    if labelled.audit:
        audit_labels_arrived(state.runtime, state.sender, dataset_id=dataset_id)
    return json_response(out)


@router.post(
    "/tasks/{task_id}/skip",
    response_model=TaskOut,
    summary="Skip a task: it goes back to the queue for the other annotators",
    description="The caller is not offered it again. With `unsure` the patch also goes to the "
    "review list (`GET /datasets/{id}/tasks/review`).",
)
def skip(
    task_id: TaskId, state: StateDep, user: CurrentUser, body: SkipTask | None = None
) -> TaskOut:
    with write_transaction(state.runtime.sessions) as session:
        task = skip_task(
            session, task_id=task_id, annotator=user, unsure=body.unsure if body else False
        )
        return task_out(task, blind=True)


@router.post(
    "/tasks/{task_id}/unskip",
    response_model=TaskOut,
    summary="Take a skip back: the task is leased to the caller again",
    responses={409: {"description": "Not skipped by the caller, or someone else has it now"}},
)
def unskip(task_id: TaskId, state: StateDep, user: CurrentUser) -> TaskOut:
    with write_transaction(state.runtime.sessions) as session:
        task = undo_skip(
            session, task_id=task_id, annotator=user, lease_seconds=state.settings.lease_seconds
        )
        dataset = get_dataset(session, task.dataset_id)
        return task_out(
            task,
            dataset=dataset,
            server=state.settings.wk_url,
            blind=True,
            prelabel=prelabel_of(session, task),
        )


@router.post("/tasks/{task_id}/release", response_model=TaskOut, summary="Give a leased task back")
def release(task_id: TaskId, state: StateDep, user: CurrentUser) -> TaskOut:
    with write_transaction(state.runtime.sessions) as session:
        return task_out(release_task(session, task_id=task_id, annotator=user), blind=True)
