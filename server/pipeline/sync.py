"""Step ``sync``: proposals out to webKnossos as tasks, finished annotations back in as
labels (each exactly once), tasks answered elsewhere cancelled. See server/webknossos/sync.py.

Workers also start one per linked dataset every ``ARTIFACT_LOOP_WK_SYNC_EVERY_S`` seconds."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.base import write_transaction
from server.db.tables import Dataset, Job
from server.errors import InvalidInput
from server.jobs import state
from server.jobs.context import StepContext
from server.jobs.kinds import JobKind
from server.jobs.queue import JobSender
from server.labels.service import labels_arrived
from server.runtime import Runtime
from server.settings import Settings
from server.webknossos import sync as wk_sync
from server.webknossos.client import WebknossosError, link_of
from server.webknossos.sync import check_sync


def check(settings: Settings, dataset: Dataset, params: dict[str, Any]) -> None:
    check_sync(settings, dataset, params)


def run(ctx: StepContext, job: Job) -> dict[str, Any]:
    dataset = ctx.dataset_of(job)
    report = wk_sync.sync(ctx.sessions, ctx.settings, dataset, job.params)
    if report.labels_added:
        labels_arrived(ctx.rt, ctx.sender, dataset_id=dataset.id)
    if report.refused:
        # what was pushed and imported is kept; the refused proposals are offered again
        raise WebknossosError(
            f"webKnossos refused {len(report.refused)} task(s) "
            f"({report.pushed} pushed, {report.labels_added} label(s) imported): "
            + "; ".join(report.refused + report.errors)
        )
    if report.errors:
        # what could be imported is kept (one transaction per annotation); say what was not
        raise InvalidInput(
            f"{len(report.errors)} annotation(s) not imported: " + "; ".join(report.errors)
        )
    return report.to_dict()


def push_new_proposals(ctx: StepContext, *, dataset_id: int) -> None:
    """A dataset that pushes tasks to webKnossos: sync its new proposals there now."""
    with write_transaction(ctx.sessions) as session:
        dataset = session.get(Dataset, dataset_id)
        link = link_of(dataset) if dataset is not None else None
        if link is not None and link.get("push"):
            start_sync(session, sender=ctx.sender, dataset_id=dataset_id, requested_by="loop")


def periodic_sync(rt: Runtime, sender: JobSender) -> list[int]:
    """A sync job for every dataset linked to webKnossos that has none waiting or running."""
    if not rt.settings.wk_url or rt.settings.wk_token is None:
        return []
    with write_transaction(rt.sessions) as session:
        started = [
            start_sync(session, sender=sender, dataset_id=dataset.id, requested_by="schedule")
            for dataset in session.scalars(select(Dataset))
            if link_of(dataset) is not None
        ]
    return [job_id for job_id in started if job_id is not None]


def start_sync(
    session: Session, *, sender: JobSender, dataset_id: int, requested_by: str
) -> int | None:
    """Start a sync of the dataset unless one is waiting or running; the new job's id."""
    if state.active_jobs(session, dataset_id=dataset_id, kinds=(JobKind.SYNC,)):
        return None
    return state.start_job(
        session, sender=sender, kind=JobKind.SYNC, dataset_id=dataset_id, requested_by=requested_by
    ).job.id
