"""Model versions: list, inspect (metrics), activate = roll back or forward."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy import select

from server.api.deps import (
    AdminUser,
    CurrentUser,
    DatasetId,
    PageDep,
    SessionDep,
    StateDep,
    VersionId,
)
from server.api.schemas import ModelVersionDetail, ModelVersionOut, PageOf
from server.datasets.service import get_dataset
from server.db.tables import ModelVersion
from server.jobs import state as jobs
from server.versions.service import activate_version, get_version, held_back_versions, unpin

router = APIRouter(tags=["models"])


@router.get(
    "/datasets/{dataset_id}/models",
    response_model=PageOf[ModelVersionOut],
    summary="Model versions of a dataset, newest first",
)
def list_versions(
    dataset_id: DatasetId,
    session: SessionDep,
    page: PageDep,
    state: StateDep,
    _user: CurrentUser,
    kind: Annotated[Literal["ae", "classifier"] | None, Query()] = None,
) -> PageOf[ModelVersionOut]:
    get_dataset(session, dataset_id)
    stmt = select(ModelVersion).where(ModelVersion.dataset_id == dataset_id)
    if kind:
        stmt = stmt.where(ModelVersion.kind == kind)
    rows, total = page.rows(session, stmt, order_by=(ModelVersion.id.desc(),))
    held = held_back_versions(
        session, dataset_id=dataset_id, kind="classifier",
        hold_back=state.settings.hold_back_worse,
    )  # fmt: skip
    return PageOf(
        items=[
            ModelVersionOut.model_validate(r).model_copy(update={"held_back": held.get(r.id)})
            for r in rows
        ],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/models/{version_id}", response_model=ModelVersionDetail, summary="One version")
def get_one(
    version_id: VersionId, session: SessionDep, state: StateDep, _user: CurrentUser
) -> ModelVersionDetail:
    version = get_version(session, version_id)
    held = held_back_versions(
        session, dataset_id=version.dataset_id, kind=version.kind,
        hold_back=state.settings.hold_back_worse,
    )  # fmt: skip
    return ModelVersionDetail.model_validate(version).model_copy(
        update={"held_back": held.get(version.id)}
    )


@router.post(
    "/models/{version_id}/activate",
    response_model=ModelVersionOut,
    summary="Make this version the active one of its kind (admin); re-scores the pool",
)
def activate(
    version_id: VersionId, session: SessionDep, state: StateDep, user: AdminUser
) -> ModelVersionOut:
    version = activate_version(session, version_id=version_id)
    out = ModelVersionOut.model_validate(version)
    # Proposals follow the active model: score the pool with it.
    jobs.start_job(
        session,
        sender=state.sender,
        kind="score",
        dataset_id=version.dataset_id,
        params={"model_version_id": version.id},
        requested_by=user.name,
    )
    return out


@router.post(
    "/datasets/{dataset_id}/models/unpin",
    response_model=ModelVersionOut | None,
    summary="Follow the automatic choice again (admin); re-scores the pool with it",
)
def unpin_versions(
    dataset_id: DatasetId,
    session: SessionDep,
    state: StateDep,
    user: AdminUser,
    kind: Annotated[Literal["ae", "classifier"], Query()] = "classifier",
) -> ModelVersionOut | None:
    get_dataset(session, dataset_id)
    chosen = unpin(session, dataset_id=dataset_id, kind=kind)
    if chosen is None:
        return None
    out = ModelVersionOut.model_validate(chosen)
    # the tasks handed out so far came from the pinned version: score and propose again
    # with the one that is active now
    jobs.start_job(
        session,
        sender=state.sender,
        kind="score",
        dataset_id=dataset_id,
        params={"model_version_id": chosen.id},
        requested_by=user.name,
    )
    return out
