"""What every job step gets: the process's runtime (database, settings) and a job sender."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from server.db.base import write_transaction
from server.db.tables import Dataset, Job
from server.errors import InvalidInput, NotFound
from server.jobs import state
from server.jobs.kinds import JobKind
from server.jobs.queue import JobSender
from server.runtime import Runtime
from server.settings import Settings

Report = Callable[[float, str], None]


@dataclass(frozen=True)
class Chunked:
    """A step's answer when it cut its work into chunk jobs: the job finishes, through its
    kind's ``chunks_done``, when the last of ``children`` has."""

    result: dict[str, Any]
    child_kind: JobKind
    children: list[int] = field(default_factory=list)


@dataclass
class StepContext:
    rt: Runtime
    sender: JobSender

    @property
    def settings(self) -> Settings:
        return self.rt.settings

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.rt.sessions

    def progress(self, job_id: int) -> Report:
        def report(fraction: float, message: str) -> None:
            state.report_progress(self.sessions, job_id=job_id, progress=fraction, message=message)

        return report

    def start(
        self,
        session: Session,
        *,
        kind: JobKind,
        dataset_id: int | None,
        params: dict[str, Any] | None = None,
        requested_by: str = "loop",
    ) -> Job:
        return state.start_job(
            session,
            sender=self.sender,
            kind=kind,
            dataset_id=dataset_id,
            params=params,
            requested_by=requested_by,
        ).job

    def dataset_of(self, job: Job) -> Dataset:
        """The job's dataset, detached from its session."""
        if job.dataset_id is None:
            raise InvalidInput(f"job {job.id} has no dataset")
        with write_transaction(self.sessions) as session:
            dataset = session.get(Dataset, job.dataset_id)
            if dataset is None:
                raise NotFound(f"dataset {job.dataset_id} no longer exists")
            session.expunge(dataset)
            return dataset
