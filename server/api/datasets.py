"""Datasets: register, list, inspect, and patch images."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.vocab import ARTIFACT_TYPES
from server.annotation.progress import task_counts
from server.annotation.tasks import get_task
from server.api.deps import (
    AdminUser,
    CurrentUser,
    DatasetId,
    PageDep,
    SessionDep,
    StateDep,
    TaskId,
)
from server.api.schemas import DatasetCreate, DatasetDetail, DatasetOut, LabelOut, PageOf
from server.datasets.service import AllowedLocations, BBox, get_dataset, grid_of, register_dataset
from server.db.tables import Dataset
from server.errors import InvalidInput
from server.jobs.kinds import JobKind
from server.jobs.state import start_job
from server.labels.examples import type_examples
from server.labels.service import label_counts
from server.pixels.source import render_patch_png
from server.versions.service import active_model

router = APIRouter(tags=["datasets"])

PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "The patch with context, outlined"}
}


def dataset_out(dataset: Dataset) -> DatasetOut:
    return DatasetOut(
        id=dataset.id,
        name=dataset.name,
        path=dataset.path,
        layer=dataset.layer,
        mag=dataset.mag,
        data_format=dataset.data_format,
        voxel_size=list(dataset.voxel_size or []),
        bbox=[
            dataset.bbox_x,
            dataset.bbox_y,
            dataset.bbox_z,
            dataset.bbox_w,
            dataset.bbox_h,
            dataset.bbox_d,
        ],
        patch_size=dataset.patch_size,
        stride=dataset.stride,
        norm_mean=dataset.norm_mean,
        norm_std=dataset.norm_std,
        patch_count=len(grid_of(dataset)),
        created_at=dataset.created_at,
    )


@router.post(
    "/datasets",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    summary="Register a webKnossos dataset (admin); starts autoencoder pretraining",
)
def create_dataset(
    body: DatasetCreate, session: SessionDep, state: StateDep, user: AdminUser
) -> DatasetOut:
    dataset = register_dataset(
        session,
        name=body.name,
        path=body.path,
        layer=body.layer,
        mag=body.mag,
        patch=body.patch,
        stride=body.stride,
        bbox=BBox.parse(body.bbox) if body.bbox else None,
        stats_sample=state.settings.stats_sample_patches,
        allowed=AllowedLocations(
            roots=state.settings.dataset_root_paths, hosts=state.settings.webknossos_hosts
        ),
    )
    out = dataset_out(dataset)
    if body.pretrain:
        start_job(
            session,
            sender=state.sender,
            kind=JobKind.PRETRAIN,
            dataset_id=dataset.id,
            requested_by=user.name,
        )
    return out


@router.get("/datasets", response_model=PageOf[DatasetOut], summary="Registered datasets")
def list_all(session: SessionDep, page: PageDep, _user: CurrentUser) -> PageOf[DatasetOut]:
    total = session.scalar(select(func.count(Dataset.id))) or 0
    rows = session.scalars(
        select(Dataset).order_by(Dataset.id).limit(page.limit).offset(page.offset)
    )
    return PageOf(
        items=[dataset_out(d) for d in rows], total=total, limit=page.limit, offset=page.offset
    )


@router.get(
    "/datasets/{dataset_id}",
    response_model=DatasetDetail,
    summary="One dataset with label and task counts and its active models",
)
def get_one(dataset_id: DatasetId, session: SessionDep, _user: CurrentUser) -> DatasetDetail:
    dataset = get_dataset(session, dataset_id)
    return dataset_detail(session, dataset)


def dataset_detail(session: Session, dataset: Dataset) -> DatasetDetail:
    active = {
        kind: (m.id if (m := active_model(session, dataset_id=dataset.id, kind=kind)) else None)
        for kind in ("ae", "classifier")
    }
    return DatasetDetail(
        **dataset_out(dataset).model_dump(),
        labels=label_counts(session, dataset_id=dataset.id),
        tasks=task_counts(session, dataset_id=dataset.id),
        active_models=active,
    )


@router.get(
    "/datasets/{dataset_id}/type-examples",
    response_model=list[LabelOut],
    summary="Confirmed examples of one artifact type, for the labeling page's guide",
    description="Agreed labels (two or more annotators, nobody else) or reviewed ones (an "
    "admin's, or on a patch resolved on the review list); newest first.",
)
def list_type_examples(
    dataset_id: DatasetId,
    session: SessionDep,
    _user: CurrentUser,
    artifact_type: Annotated[str, Query(description=", ".join(ARTIFACT_TYPES))],
    limit: Annotated[int, Query(ge=1, le=20)] = 3,
) -> list[LabelOut]:
    get_dataset(session, dataset_id)
    if artifact_type not in ARTIFACT_TYPES:
        raise InvalidInput(f"artifact_type must be one of {', '.join(ARTIFACT_TYPES)}")
    found = type_examples(session, dataset_id=dataset_id, artifact_type=artifact_type, limit=limit)
    return [LabelOut.model_validate(label) for label in found]


@router.get(
    "/datasets/{dataset_id}/patch.png",
    response_class=Response,
    responses=PNG,
    summary="Image of any patch (x, y, z: top-left in mag-1 voxels) with a context margin",
)
def patch_image(
    dataset_id: DatasetId,
    session: SessionDep,
    state: StateDep,
    _user: CurrentUser,
    x: Annotated[int, Query(ge=-(2**40), le=2**40)],
    y: Annotated[int, Query(ge=-(2**40), le=2**40)],
    z: Annotated[int, Query(ge=-(2**40), le=2**40)],
    margin: Annotated[int, Query(ge=0, le=512, description="Context in pixels")] = 70,
    scale: Annotated[int, Query(ge=1, le=4)] = 1,
    lo: Annotated[float | None, Query(description="Contrast: value shown black")] = None,
    hi: Annotated[float | None, Query(description="Contrast: value shown white")] = None,
) -> Response:
    dataset = get_dataset(session, dataset_id)
    return _png(state, dataset, (x, y, z), margin=margin, scale=scale, lo=lo, hi=hi)


@router.get(
    "/tasks/{task_id}/image.png",
    response_class=Response,
    responses=PNG,
    summary="Image of a task's patch with a context margin",
    tags=["tasks"],
)
def task_image(
    task_id: TaskId,
    session: SessionDep,
    state: StateDep,
    _user: CurrentUser,
    margin: Annotated[int, Query(ge=0, le=512)] = 70,
    scale: Annotated[int, Query(ge=1, le=4)] = 1,
    lo: Annotated[float | None, Query()] = None,
    hi: Annotated[float | None, Query()] = None,
) -> Response:
    task = get_task(session, task_id)
    dataset = get_dataset(session, task.dataset_id)
    return _png(state, dataset, (task.x, task.y, task.z), margin=margin, scale=scale, lo=lo, hi=hi)


def _png(
    state: StateDep,
    dataset: Dataset,
    origin: tuple[int, int, int],
    *,
    margin: int,
    scale: int,
    lo: float | None,
    hi: float | None,
) -> Response:
    if (lo is None) != (hi is None):
        raise InvalidInput("give both lo and hi for a fixed contrast, or neither")
    if lo is not None and hi is not None and hi <= lo:
        raise InvalidInput("hi must be greater than lo")
    x0, y0, z0 = dataset.bbox_x, dataset.bbox_y, dataset.bbox_z
    if not (
        x0 <= origin[0] < x0 + dataset.bbox_w
        and y0 <= origin[1] < y0 + dataset.bbox_h
        and z0 <= origin[2] < z0 + dataset.bbox_d
    ):
        raise InvalidInput(f"({origin[0]}, {origin[1]}, {origin[2]}) is outside the dataset")
    data = render_patch_png(
        state.source(dataset),
        origin,
        size_px=dataset.patch_size,
        margin_px=margin,
        contrast=(lo, hi) if lo is not None and hi is not None else None,
        scale=scale,
    )
    return Response(
        data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
    )
