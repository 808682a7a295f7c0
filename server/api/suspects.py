"""Suspect labels: training labels the last classifier confidently contradicts out of fold,
with the model's view and the re-label task that asks someone else for a second look."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from server.annotation.relabel import suspect_page
from server.api.deps import CurrentUser, DatasetId, PageDep, SessionDep
from server.api.schemas import LabelValue, PageOf
from server.datasets.service import get_dataset

router = APIRouter(tags=["labels"])


class Box(BaseModel):
    x: int
    y: int
    z: int
    w: int
    h: int


class RelabelTask(BaseModel):
    id: int
    status: str
    label: LabelValue | None = Field(description="The second verdict, once given")
    annotator: str | None = Field(description="Who gave the second verdict")


class SuspectOut(BaseModel):
    label_id: int
    position: Box
    annotator: str = Field(description="Who gave the suspect label")
    label: LabelValue = Field(description="The label given")
    p_artifact: float | None = Field(description="The classifier's p(artifact) of the patch")
    p_given: float = Field(description="The model's out-of-fold probability of the label given")
    score: float = Field(
        description="P(the label is wrong) under the consensus of all labels with the model's "
        "out-of-fold view as one more rater"
    )
    model_version_id: int = Field(description="The classifier whose training found it")
    relabel_task: RelabelTask | None = Field(
        description="The newest re-label task at the label's position, if any"
    )


@router.get(
    "/datasets/{dataset_id}/suspect-labels",
    response_model=PageOf[SuspectOut],
    summary="Labels the consensus with the model's out-of-fold view contradicts, strongest first",
    description="After each training, K-fold logistic regression on the autoencoder's and the "
    "classifier's features gives the model's out-of-fold view of every training label; with "
    "it as one more rater, the Dawid-Skene consensus of all labels gives each label "
    "P(wrong), and a label is suspect from 0.3. The next batches offer suspects to another "
    "annotator as re-label tasks.",
)
def list_suspect_labels(
    dataset_id: DatasetId, session: SessionDep, page: PageDep, _user: CurrentUser
) -> PageOf[SuspectOut]:
    get_dataset(session, dataset_id)
    items, total = suspect_page(
        session, dataset_id=dataset_id, limit=page.limit, offset=page.offset
    )
    return PageOf[SuspectOut](
        items=[SuspectOut.model_validate(item) for item in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )
