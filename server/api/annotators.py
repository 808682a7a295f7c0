"""Annotators of a dataset: labels, pace, agreement with the consensus and with each other."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from models.consensus import Estimate
from server.api.deps import AdminUser, CurrentUser, DatasetId, PageDep, SessionDep, StateDep
from server.api.schemas import PageOf
from server.datasets.service import get_dataset
from server.db.base import write_transaction
from server.labels.agreement import annotator_report
from server.labels.consensus import LABEL_AGGREGATIONS, check_aggregation, label_aggregation
from server.labels.consensus_view import PositionConsensus, positions_with_several_labels
from server.labels.weights import retrain_after_weight_change, set_label_weight

router = APIRouter(tags=["labels"])


class Figure(BaseModel):
    value: float | None = Field(description="None when it cannot be estimated; see reason")
    n: int = Field(description="How many labels or patches the figure rests on")
    reason: str | None = Field(None, description="Why the figure or its interval is missing")


class IntervalFigure(Figure):
    interval: tuple[float, float] | None = Field(
        None, description="95% percentile bootstrap interval over patches"
    )


class Reliability(Figure):
    sensitivity: float | None = Field(None, description="P(says artifact | artifact)")
    specificity: float | None = Field(None, description="P(says clean | clean)")


class AnnotatorOut(BaseModel):
    annotator: str
    labels: int
    clean: int
    artifact: int
    labels_per_hour: Figure
    agreement_with_consensus: Figure
    reliability: Reliability
    label_weight: float = Field(
        description="How much their labels count in training and audit consensus (0: excluded)"
    )
    label_weight_reason: str | None = None


class PairOut(BaseModel):
    first: str
    second: str
    kappa: IntervalFigure


class AnnotatorsOut(BaseModel):
    labels: int
    patches: int
    patches_with_several: int = Field(description="Patches labelled by two or more annotators")
    annotators: list[AnnotatorOut]
    pairs: list[PairOut] = Field(
        description="Cohen's kappa of each pair on the patches both labelled"
    )
    alpha: IntervalFigure = Field(description="Krippendorff's alpha (nominal) over all annotators")


def _figure(e: Estimate) -> Figure:
    return Figure(value=e.value, n=e.n, reason=e.reason)


def _interval(e: Estimate) -> IntervalFigure:
    return IntervalFigure(value=e.value, n=e.n, reason=e.reason, interval=e.interval)


@router.get(
    "/datasets/{dataset_id}/annotators",
    response_model=AnnotatorsOut,
    summary="Per annotator: labels, labels per hour, agreement with the consensus, reliability; "
    "kappa per pair and alpha overall",
    description="The consensus and each annotator's sensitivity and specificity are estimated "
    "jointly (Dawid-Skene, EM with a Beta prior), with the newest classifier's out-of-fold "
    "view of the patches it trained on as one more rater; reliability is their balanced "
    "accuracy. "
    "Kappa and alpha carry 95% bootstrap intervals over patches. A figure that cannot be "
    "estimated is null with a reason.",
)
def list_annotators(
    dataset_id: DatasetId, session: SessionDep, _user: CurrentUser
) -> AnnotatorsOut:
    get_dataset(session, dataset_id)
    report = annotator_report(session, dataset_id=dataset_id)
    return AnnotatorsOut(
        labels=report.labels,
        patches=report.patches,
        patches_with_several=report.patches_with_several,
        annotators=[
            AnnotatorOut(
                annotator=a.annotator,
                labels=a.labels,
                clean=a.clean,
                artifact=a.artifact,
                labels_per_hour=_figure(a.labels_per_hour),
                agreement_with_consensus=_figure(a.agreement_with_consensus),
                reliability=Reliability(
                    value=a.reliability.value,
                    n=a.reliability.n,
                    reason=a.reliability.reason,
                    sensitivity=a.sensitivity,
                    specificity=a.specificity,
                ),
                label_weight=a.label_weight,
                label_weight_reason=a.label_weight_reason,
            )
            for a in report.annotators
        ],
        pairs=[
            PairOut(first=p["first"], second=p["second"], kappa=_interval(p["kappa"]))
            for p in report.pairs
        ],
        alpha=_interval(report.alpha),
    )


class WeightIn(BaseModel):
    weight: float = Field(ge=0, le=1, description="1: full, 0: excluded, between: down-weighted")
    reason: str | None = Field(None, max_length=1000, description="Why, for the other admins")


class WeightOut(BaseModel):
    annotator: str
    weight: float
    reason: str | None
    trainings: list[int] = Field(
        description="Trainings queued (job ids): one per dataset the annotator labelled that "
        "trains on the consensus and has an autoencoder; none when the weight did not change"
    )


@router.put(
    "/annotators/{name}/weight",
    response_model=WeightOut,
    summary="Down-weight or exclude an annotator's labels (admin); training follows",
    description="The weight (0 to 1) scales the annotator's say in the consensus that "
    "training and audit metrics use; 0 leaves their labels out (they stay stored). A changed "
    "weight queues a training on every dataset they labelled.",
)
def set_weight(
    name: Annotated[str, Path(min_length=1, max_length=200)],
    body: WeightIn,
    state: StateDep,
    user: AdminUser,
) -> WeightOut:
    with write_transaction(state.runtime.sessions) as session:
        change = set_label_weight(session, name=name, weight=body.weight, reason=body.reason)
    trainings: list[int] = []
    if change.changed:
        trainings = retrain_after_weight_change(
            state.runtime, state.sender, datasets=change.datasets, name=name,
            requested_by=user.name,
        )  # fmt: skip
    return WeightOut(annotator=name, weight=body.weight, reason=body.reason, trainings=trainings)


class VerdictOut(BaseModel):
    id: int
    annotator: str
    label: str
    artifact_type: str | None
    source: str
    annotator_weight: float = Field(description="The annotator's label weight (0: excluded)")
    counted: bool = Field(
        description="In the consensus: not excluded and not replaced by the same annotator's "
        "later label (with `latest`: only the latest label counts)"
    )


class PositionOut(BaseModel):
    x: int
    y: int
    z: int
    w: int
    h: int
    audit: bool = Field(description="An audit patch: measures versions, never trained on")
    aggregation: str = Field(description="The dataset's label_aggregation: consensus or latest")
    verdict: str | None = Field(description="What training or the audit takes; null: none")
    p_artifact: float | None = Field(description="Consensus P(artifact) (0 or 1 with latest)")
    training_weight: float | None = Field(
        description="How much the position counts in training (null on audit patches)"
    )
    labels: list[VerdictOut]


def _position_out(p: PositionConsensus) -> PositionOut:
    return PositionOut(
        x=p.x, y=p.y, z=p.z, w=p.w, h=p.h, audit=p.audit, aggregation=p.aggregation,
        verdict=p.verdict, p_artifact=p.p_artifact, training_weight=p.training_weight,
        labels=[
            VerdictOut(
                id=v.label.id, annotator=v.label.annotator, label=v.label.label,
                artifact_type=v.label.artifact_type, source=v.label.source,
                annotator_weight=v.annotator_weight, counted=v.counted,
            )
            for v in p.labels
        ],
    )  # fmt: skip


@router.get(
    "/datasets/{dataset_id}/consensus",
    response_model=PageOf[PositionOut],
    summary="Positions with several labels: the consensus training or the audit takes, and "
    "each annotator's verdict",
    description="Ordered by z, y, x. The consensus is Dawid-Skene over the counted labels, each "
    "annotator's verdicts scaled by their label weight (see PUT /annotators/{name}/weight).",
)
def list_consensus(
    dataset_id: DatasetId, session: SessionDep, page: PageDep, _user: CurrentUser
) -> PageOf[PositionOut]:
    dataset = get_dataset(session, dataset_id)
    rows, total = positions_with_several_labels(
        session, dataset=dataset, limit=page.limit, offset=page.offset
    )
    return PageOf(
        items=[_position_out(p) for p in rows], total=total, limit=page.limit, offset=page.offset
    )


class AggregationSetting(BaseModel):
    label_aggregation: str = Field(
        description="How several labels of a position become the one training and the audit "
        f"use: {' or '.join(LABEL_AGGREGATIONS)} (default {LABEL_AGGREGATIONS[0]})"
    )


@router.get(
    "/datasets/{dataset_id}/label-aggregation",
    response_model=AggregationSetting,
    summary="How several labels of a position become one: consensus or latest",
)
def get_aggregation(
    dataset_id: DatasetId, session: SessionDep, _user: CurrentUser
) -> AggregationSetting:
    return AggregationSetting(label_aggregation=label_aggregation(get_dataset(session, dataset_id)))


@router.put(
    "/datasets/{dataset_id}/label-aggregation",
    response_model=AggregationSetting,
    summary="Set how several labels of a position become one (admin)",
    description="Applies from the next training on.",
)
def set_aggregation(
    dataset_id: DatasetId, body: AggregationSetting, state: StateDep, _user: AdminUser
) -> AggregationSetting:
    value = check_aggregation(body.label_aggregation)
    with write_transaction(state.runtime.sessions) as session:
        dataset = get_dataset(session, dataset_id)
        dataset.settings = {**(dataset.settings or {}), "label_aggregation": value}
    return AggregationSetting(label_aggregation=value)
