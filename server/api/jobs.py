"""Jobs: start background work, follow its progress, cancel it."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy import select

from server.api.deps import AdminUser, CurrentUser, DatasetId, JobId, PageDep, SessionDep, StateDep
from server.api.schemas import JobCreate, JobOut, PageOf, StartedJobOut
from server.datasets.service import get_dataset
from server.db.tables import Job
from server.errors import InvalidInput
from server.jobs import state as jobs
from server.jobs.kinds import JobKind, JobState
from server.jobs.registry import resolve, spec_of

router = APIRouter(tags=["jobs"])


@router.post(
    "/datasets/{dataset_id}/jobs",
    response_model=StartedJobOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Start a job (admin): pretrain, train, score, propose, predict, sync or audit",
    description="A pretrain or train request while one is already waiting returns that one "
    "(`coalesced: true`).",
)
def start(
    dataset_id: DatasetId, body: JobCreate, session: SessionDep, state: StateDep, user: AdminUser
) -> StartedJobOut:
    dataset = get_dataset(session, dataset_id)
    spec = spec_of(body.kind)
    spec.params.of(body.params)  # 422 for a misspelt or mistyped parameter
    if spec.check is not None:
        resolve(spec.check)(state.runtime.settings, dataset, body.params or {})
    started = jobs.start_job(
        session,
        sender=state.sender,
        kind=body.kind,
        dataset_id=dataset_id,
        params=body.params,
        requested_by=user.name,
    )
    return StartedJobOut(job=JobOut.model_validate(started.job), coalesced=started.coalesced)


@router.get(
    "/jobs",
    response_model=PageOf[JobOut],
    summary="Jobs, newest first",
    description="The answer carries an `ETag`; sent back in `If-None-Match`, an unchanged "
    "page is answered 304 without a body.",
    responses={304: {"description": "Unchanged since the tag in If-None-Match"}},
)
def list_jobs(
    request: Request,
    session: SessionDep,
    page: PageDep,
    _user: CurrentUser,
    dataset_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    state: Annotated[str | None, Query(description=", ".join(JobState))] = None,
    kind: Annotated[str | None, Query(description=", ".join(JobKind))] = None,
    top_level: Annotated[bool, Query(description="Hide chunk jobs of a parent job")] = True,
) -> Response:
    if state is not None and state not in set(JobState):
        raise InvalidInput(f"state must be one of {', '.join(JobState)}")
    if kind is not None and kind not in set(JobKind):
        raise InvalidInput(f"kind must be one of {', '.join(JobKind)}")
    stmt = select(Job)
    if dataset_id is not None:
        stmt = stmt.where(Job.dataset_id == dataset_id)
    if state:
        stmt = stmt.where(Job.state == state)
    if kind:
        stmt = stmt.where(Job.kind == kind)
    if top_level:
        stmt = stmt.where(Job.parent_id.is_(None))
    rows, total = page.rows(session, stmt, order_by=(Job.id.desc(),))
    body = PageOf(
        items=[JobOut.model_validate(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    ).model_dump_json()
    # a page that polls sends the tag it has: unchanged jobs cost a 304 and no body
    tag = f'"{hashlib.sha256(body.encode()).hexdigest()[:32]}"'
    headers = {"ETag": tag, "Cache-Control": "private, no-cache"}
    if tag in request.headers.get("if-none-match", ""):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


@router.get("/jobs/{job_id}", response_model=JobOut, summary="State and progress of a job")
def get_one(job_id: JobId, session: SessionDep, _user: CurrentUser) -> JobOut:
    return JobOut.model_validate(jobs.get_job(session, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, summary="Cancel a job (admin)")
def cancel(job_id: JobId, session: SessionDep, _user: AdminUser) -> JobOut:
    return JobOut.model_validate(jobs.cancel_job(session, job_id=job_id))
