"""Annotators' label weights: an admin down-weights or excludes someone's labels (they stay
stored), and every dataset that person labelled trains again on the new consensus."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.base import write_transaction
from server.db.tables import Annotator, Dataset, Label
from server.errors import InvalidInput, NotFound
from server.jobs import state
from server.jobs.kinds import JobKind
from server.jobs.queue import JobSender, SendLater
from server.labels.consensus import label_aggregation
from server.runtime import Runtime
from server.versions.service import active_model


@dataclass(frozen=True)
class WeightChange:
    annotator: Annotator
    changed: bool
    datasets: list[int]  # datasets with labels by the annotator


def set_label_weight(
    session: Session, *, name: str, weight: float, reason: str | None
) -> WeightChange:
    """Set how much ``name``'s labels count (0 to 1; 0 excludes them). A name known only
    from labels (a file import, webKnossos) gets an account without a token to hold it."""
    if not 0.0 <= weight <= 1.0:
        raise InvalidInput(f"a label weight is from 0 (excluded) to 1, not {weight!r}")
    annotator = session.scalar(select(Annotator).where(Annotator.name == name))
    datasets = sorted(
        session.scalars(select(Label.dataset_id).where(Label.annotator == name).distinct())
    )
    if annotator is None:
        if not datasets:
            raise NotFound(f"no annotator {name!r}: no account and no label by that name")
        annotator = Annotator(name=name, role="annotator", active=False)
        session.add(annotator)
    changed = annotator.label_weight is None or float(annotator.label_weight) != weight
    annotator.label_weight = weight
    annotator.label_weight_reason = reason
    session.flush()
    return WeightChange(annotator, changed, datasets)


def retrain_after_weight_change(
    rt: Runtime, sender: JobSender, *, datasets: list[int], name: str, requested_by: str
) -> list[int]:
    """Call after committing a changed weight: a training on each dataset in ``datasets``
    that trains on the consensus and has an autoencoder to fine-tune from (a training
    waiting already takes the change in). Returns the trainings' job ids."""
    started: list[int] = []
    for dataset_id in datasets:
        with write_transaction(rt.sessions) as session:
            dataset = session.get(Dataset, dataset_id)
            if dataset is None or label_aggregation(dataset) != "consensus":
                continue
            if active_model(session, dataset_id=dataset_id, kind="ae") is None:
                continue
            job = state.start_job(
                session,
                sender=SendLater(sender),
                kind=JobKind.TRAIN,
                dataset_id=dataset_id,
                params={"trigger": f"label weight of {name} changed"},
                requested_by=requested_by,
            ).job
            started.append(job.id)
    return started
