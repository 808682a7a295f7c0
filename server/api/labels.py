"""Labels: create for any patch, list, undo, disagreements, export and import."""

from __future__ import annotations

import io
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response, UploadFile, status
from starlette.concurrency import run_in_threadpool

from server.annotation.tasks import change_verdict, undo_label
from server.api.deps import (
    AdminUser,
    CurrentUser,
    DatasetId,
    PageDep,
    SessionDep,
    StateDep,
    json_response,
)
from server.api.schemas import (
    ArtifactType,
    ImportReportOut,
    LabelChange,
    LabelCreate,
    LabelOut,
    LabelValue,
    PageOf,
)
from server.datasets.service import get_dataset
from server.db.base import write_transaction
from server.db.tables import LABEL_SOURCES
from server.errors import InvalidInput, PayloadTooLarge
from server.labels.export import export_labels_csv, export_labels_json
from server.labels.importer import import_label_file
from server.labels.records import ZipLimits
from server.labels.rows import check_artifact_type
from server.labels.service import (
    LabelFilter,
    NewLabel,
    create_label,
    disagreements,
    labels_arrived,
    list_labels,
    training_may_start,
)
from server.pixels.source import patch_extent

router = APIRouter(tags=["labels"])

LabelId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Id of the label")]


@router.post(
    "/datasets/{dataset_id}/labels",
    response_model=LabelOut,
    status_code=status.HTTP_201_CREATED,
    summary="Label any patch (x, y, z: top-left in mag-1 voxels)",
)
def create(
    dataset_id: DatasetId, body: LabelCreate, state: StateDep, user: CurrentUser
) -> Response:
    with write_transaction(state.runtime.sessions) as session:
        dataset = get_dataset(session, dataset_id)
        w, h = patch_extent(dataset)
        label, created = create_label(
            session,
            dataset=dataset,
            new=NewLabel(
                x=body.x,
                y=body.y,
                z=body.z,
                w=body.w or w,
                h=body.h or h,
                label=body.label,
                artifact_type=body.artifact_type,
            ),
            annotator=user,
            source="api",
            idempotency_key=body.idempotency_key,
        )
        out = LabelOut.model_validate(label)
        may_start = created and training_may_start(session, dataset_id=dataset_id)
    if may_start:
        labels_arrived(state.runtime, state.sender, dataset_id=dataset_id, may_start=True)
    return json_response(out, status.HTTP_201_CREATED)


@router.get(
    "/datasets/{dataset_id}/labels",
    response_model=PageOf[LabelOut],
    summary="Labels of a dataset, oldest first, with filters",
)
def list_all(
    dataset_id: DatasetId,
    session: SessionDep,
    page: PageDep,
    _user: CurrentUser,
    label: LabelValue | None = None,
    artifact_type: ArtifactType | None = None,
    annotator: Annotated[str | None, Query(max_length=200)] = None,
    source: Annotated[str | None, Query(description=", ".join(LABEL_SOURCES))] = None,
    z: Annotated[int | None, Query(ge=-(2**40), le=2**40)] = None,
) -> PageOf[LabelOut]:
    get_dataset(session, dataset_id)
    if source is not None and source not in LABEL_SOURCES:
        raise InvalidInput(f"source must be one of {', '.join(LABEL_SOURCES)}")
    rows, total = list_labels(
        session,
        dataset_id=dataset_id,
        filters=LabelFilter(
            label=label, artifact_type=artifact_type, annotator=annotator, source=source, z=z
        ),
        limit=page.limit,
        offset=page.offset,
    )
    return PageOf(
        items=[LabelOut.model_validate(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.delete(
    "/labels/{label_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Undo a label (your own; admins any)",
    description="A label given on a task puts the task back under the caller's lease, so it "
    "can be labelled again.",
)
def undo(label_id: LabelId, state: StateDep, user: CurrentUser) -> Response:
    with write_transaction(state.runtime.sessions) as session:
        undo_label(
            session, label_id=label_id, annotator=user, lease_seconds=state.settings.lease_seconds
        )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/labels/{label_id}",
    response_model=LabelOut,
    summary="Change your verdict on a patch",
    description="The old label is replaced by a new one (a new id, the same patch and task), "
    "so the next training counts the change.",
    responses={409: {"description": "The label is someone else's"}},
)
def change(label_id: LabelId, body: LabelChange, state: StateDep, user: CurrentUser) -> LabelOut:
    check_artifact_type(label=body.label, artifact_type=body.artifact_type)
    with write_transaction(state.runtime.sessions) as session:
        label = change_verdict(
            session,
            label_id=label_id,
            annotator=user,
            label=body.label,
            artifact_type=body.artifact_type,
        )
        out = LabelOut.model_validate(label)
        dataset_id = label.dataset_id
    labels_arrived(state.runtime, state.sender, dataset_id=dataset_id)
    return out


@router.get(
    "/datasets/{dataset_id}/disagreements",
    summary="Patches where annotators gave different verdicts",
)
def list_disagreements(
    dataset_id: DatasetId, session: SessionDep, page: PageDep, _user: CurrentUser
) -> dict[str, Any]:
    get_dataset(session, dataset_id)
    items, total = disagreements(
        session, dataset_id=dataset_id, limit=page.limit, offset=page.offset
    )
    return {"items": items, "total": total, "limit": page.limit, "offset": page.offset}


@router.get(
    "/datasets/{dataset_id}/labels/export",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}, "application/json": {}}}},
    summary="Every label of the dataset as CSV or JSON",
)
def export(
    dataset_id: DatasetId,
    session: SessionDep,
    _user: CurrentUser,
    format: Literal["csv", "json"] = "csv",
) -> Response:
    dataset = get_dataset(session, dataset_id)
    buffer = io.StringIO()
    if format == "csv":
        export_labels_csv(session, dataset=dataset, out=buffer)
        media = "text/csv"
    else:
        export_labels_json(session, dataset=dataset, out=buffer)
        media = "application/json"
    name = f"{dataset.name}-labels.{format}"
    return Response(
        buffer.getvalue(),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.post(
    "/datasets/{dataset_id}/labels/import",
    response_model=ImportReportOut,
    summary="Import a label file (webKnossos .nml/.zip or a genEM3 data-source .json; admin)",
    responses={413: {"description": "The file is larger than the configured limit"}},
)
async def import_file(
    dataset_id: DatasetId, file: UploadFile, state: StateDep, user: AdminUser
) -> ImportReportOut:
    # The body was refused on its declared length, or counted while it streamed in, before
    # this runs (server.api.guards); the parser spooled the file to disk, not to memory.
    limit = state.settings.max_upload_bytes
    filename = file.filename or "upload"
    if "\x00" in filename or len(filename) > 500:
        raise InvalidInput("the file name must be at most 500 characters, without NUL")
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"upload larger than the limit of {limit:,} bytes")
    return await run_in_threadpool(
        _import,
        state,
        dataset_id=dataset_id,
        filename=filename,
        data=data,
        user=user,
    )


def _import(
    state: StateDep, *, dataset_id: int, filename: str, data: bytes, user: Any
) -> ImportReportOut:
    limits = ZipLimits(
        members=state.settings.max_zip_members,
        inflated_bytes=state.settings.max_zip_inflated_bytes,
    )
    with write_transaction(state.runtime.sessions) as session:
        dataset = get_dataset(session, dataset_id)
        report = import_label_file(
            session,
            dataset=dataset,
            filename=filename,
            data=data,
            annotator=user.name,
            annotator_id=user.id,
            zip_limits=limits,
        )
    job = None
    if report.added:
        job = labels_arrived(state.runtime, state.sender, dataset_id=dataset_id)
    return ImportReportOut(**report.to_dict(), training_job_id=job.id if job is not None else None)
