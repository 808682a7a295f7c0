"""Annotators of a dataset: labels, pace, agreement with the consensus and with each other."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from models.consensus import Estimate
from server.api.deps import CurrentUser, DatasetId, SessionDep
from server.datasets.service import get_dataset
from server.labels.agreement import annotator_report

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
    "jointly (Dawid-Skene, EM with a Beta prior); reliability is their balanced accuracy. "
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
            )
            for a in report.annotators
        ],
        pairs=[
            PairOut(first=p["first"], second=p["second"], kappa=_interval(p["kappa"]))
            for p in report.pairs
        ],
        alpha=_interval(report.alpha),
    )
