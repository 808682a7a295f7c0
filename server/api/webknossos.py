"""The link between a dataset and its copy on a webKnossos server: tasks pushed, annotations
pulled. The server's URL and token are service settings and never appear here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import func, select

from server.api.deps import AdminUser, CurrentUser, DatasetId, SessionDep, StateDep
from server.datasets.service import get_dataset
from server.db.tables import WkAnnotation, WkTask
from server.webknossos.sync import find_dataset_id, link_of

router = APIRouter(tags=["webknossos"])


class WebknossosLink(BaseModel):
    dataset_id: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{24}$",
        description="The dataset's id on the webKnossos server: 24 hex digits, as in its "
        "URL (/datasets/<name>-<id>/view) and in the dataset's settings",
        examples=["6980c803d10000d7de2cc080"],
    )
    dataset_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Instead of dataset_id: the dataset's name on the server, looked up there",
    )
    push: bool = Field(default=False, description="Push proposed patches as webKnossos tasks")
    instances: int = Field(default=1, ge=1, le=10, description="Annotators per pushed task")

    @model_validator(mode="after")
    def _one_reference(self) -> WebknossosLink:
        if (self.dataset_id is None) == (self.dataset_name is None):
            raise ValueError("give either dataset_id (24 hex digits) or dataset_name")
        return self


class WebknossosStatus(BaseModel):
    server: str | None = Field(description="The configured webKnossos server, if any")
    link: dict[str, Any] | None
    tasks: dict[str, int] = Field(description="Pushed tasks by state")
    annotations_imported: int
    labels_from_annotations: int


def _status(session: SessionDep, state: StateDep, dataset_id: int) -> WebknossosStatus:
    dataset = get_dataset(session, dataset_id)
    tasks = dict(
        session.execute(
            select(WkTask.state, func.count(WkTask.id))
            .where(WkTask.dataset_id == dataset_id)
            .group_by(WkTask.state)
        ).all()
    )
    imported, labels = session.execute(
        select(
            func.count(WkAnnotation.id), func.coalesce(func.sum(WkAnnotation.labels_added), 0)
        ).where(WkAnnotation.dataset_id == dataset_id)
    ).one()
    return WebknossosStatus(
        server=state.runtime.settings.wk_url,
        link=link_of(dataset),
        tasks={s: int(tasks.get(s, 0)) for s in ("open", "finished", "cancelled")},
        annotations_imported=int(imported),
        labels_from_annotations=int(labels),
    )


@router.get(
    "/datasets/{dataset_id}/webknossos",
    response_model=WebknossosStatus,
    summary="The dataset's webKnossos link, pushed tasks and imported annotations",
)
def get_link(
    dataset_id: DatasetId, session: SessionDep, state: StateDep, _user: CurrentUser
) -> WebknossosStatus:
    return _status(session, state, dataset_id)


@router.put(
    "/datasets/{dataset_id}/webknossos",
    response_model=WebknossosStatus,
    summary="Link the dataset to its copy on the webKnossos server (admin)",
    description='Then `POST /datasets/{id}/jobs` with `{"kind": "sync"}` pushes proposals '
    "(when `push` is true) and imports finished annotations; workers also sync periodically.",
)
def put_link(
    dataset_id: DatasetId,
    body: WebknossosLink,
    session: SessionDep,
    state: StateDep,
    _user: AdminUser,
) -> WebknossosStatus:
    dataset = get_dataset(session, dataset_id)
    link = body.model_dump(exclude={"dataset_name"})
    if body.dataset_id is None:
        assert body.dataset_name is not None
        link["dataset_id"] = find_dataset_id(state.runtime.settings, name=body.dataset_name)
    dataset.settings = {**(dataset.settings or {}), "webknossos": link}
    session.flush()
    return _status(session, state, dataset_id)
