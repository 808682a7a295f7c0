"""Job state: the only module that writes a job's state, progress and result.

A job row is created first, then its id is sent to a queue. A worker claims it with a
conditional UPDATE (``queued -> running``), so a redelivered message never runs a job twice;
running jobs send heartbeats; a reaper puts jobs whose worker died back on the queue (or
fails them after too many attempts).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from server.db.base import utcnow, write_transaction
from server.db.tables import Dataset, Job
from server.errors import Conflict, InvalidInput, NotFound
from server.jobs.kinds import ACTIVE_STATES, JobKind, JobState
from server.jobs.queue import JobSender
from server.jobs.registry import EXCLUSIVE_KINDS, REGISTRY, STARTABLE_KINDS, spec_of
from server.versions.state import fail_unfinished

MAX_ATTEMPTS = 3


class JobCancelled(Exception):
    """Raised inside a running job when someone cancelled it."""


@dataclass(frozen=True)
class StartedJob:
    job: Job
    coalesced: bool


def create_job(
    session: Session,
    *,
    kind: str,
    dataset_id: int | None,
    params: dict[str, Any] | None = None,
    requested_by: str | None = None,
    parent_id: int | None = None,
) -> Job:
    spec = spec_of(kind)
    job = Job(
        kind=spec.kind.value,
        dataset_id=dataset_id,
        params=spec.params.of(params).stored(),
        requested_by=requested_by,
        parent_id=parent_id,
        state=JobState.QUEUED,
        message="queued",
    )
    session.add(job)
    session.flush()
    return job


def start_job(
    session: Session,
    *,
    sender: JobSender,
    kind: str,
    dataset_id: int | None,
    params: dict[str, Any] | None = None,
    requested_by: str | None = None,
) -> StartedJob:
    """Create and enqueue a job; a pretrain/train request while one of the same kind is
    still queued for the dataset returns that one instead (triggers coalesce)."""
    if kind not in STARTABLE_KINDS:
        raise InvalidInput(f"unknown job kind {kind!r}; use one of {', '.join(STARTABLE_KINDS)}")
    if dataset_id is not None:
        _lock_dataset(session, dataset_id)
    if kind in EXCLUSIVE_KINDS and dataset_id is not None:
        waiting = session.scalar(
            select(Job).where(
                Job.dataset_id == dataset_id, Job.kind == kind, Job.state == JobState.QUEUED
            )
        )
        if waiting is not None:
            return StartedJob(job=waiting, coalesced=True)
    job = create_job(
        session, kind=kind, dataset_id=dataset_id, params=params, requested_by=requested_by
    )
    session.commit()  # the row must exist before a worker can see the message
    sender.send(job_id=job.id, kind=kind)
    return StartedJob(job=job, coalesced=False)


def _lock_dataset(session: Session, dataset_id: int) -> None:
    """Serialise job bookkeeping per dataset (row lock on PostgreSQL; SQLite has one writer)."""
    stmt = select(Dataset.id).where(Dataset.id == dataset_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    if session.scalar(stmt) is None:
        raise NotFound(f"no dataset {dataset_id}")


def claim_job(sessions: sessionmaker[Session], *, job_id: int, worker: str) -> Job | None:
    """Atomically move a queued job to running. ``None`` when it is not claimable (already
    running elsewhere, finished, cancelled) or an exclusive job of its dataset is running."""
    with write_transaction(sessions) as session:
        job = session.get(Job, job_id)
        if job is None or job.state != JobState.QUEUED:
            return None
        if job.kind in EXCLUSIVE_KINDS and job.dataset_id is not None:
            _lock_dataset(session, job.dataset_id)
            busy = session.scalar(
                select(Job.id).where(
                    Job.dataset_id == job.dataset_id,
                    Job.kind.in_(EXCLUSIVE_KINDS),
                    Job.state == JobState.RUNNING,
                    Job.id != job_id,
                )
            )
            if busy is not None:
                raise Conflict(f"job {busy} of the same dataset is running")
        now = utcnow()
        claimed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.QUEUED)
            .values(
                state=JobState.RUNNING,
                worker=worker,
                started_at=now,
                heartbeat_at=now,
                attempts=Job.attempts + 1,
                message="started",
            )
        ).rowcount
        if claimed != 1:
            return None
        session.refresh(job)
        return job


def report_progress(
    sessions: sessionmaker[Session], *, job_id: int, progress: float, message: str = ""
) -> None:
    """Record progress and a heartbeat; raises :class:`JobCancelled` if the job was cancelled."""
    with write_transaction(sessions) as session:
        updated = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING)
            .values(
                progress=max(0.0, min(1.0, progress)), message=message[:500], heartbeat_at=utcnow()
            )
        ).rowcount
    if updated != 1:
        raise JobCancelled(f"job {job_id} is no longer running")


def heartbeat(sessions: sessionmaker[Session], *, job_id: int) -> None:
    with write_transaction(sessions) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING)
            .values(heartbeat_at=utcnow())
        )


def finish_job(
    sessions: sessionmaker[Session], *, job_id: int, result: dict[str, Any] | None = None
) -> None:
    with write_transaction(sessions) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING)
            .values(
                state=JobState.SUCCEEDED,
                progress=1.0,
                message=str((result or {}).get("summary", "done"))[:500],
                result=result or {},
                finished_at=utcnow(),
            )
        )


def fail_job(sessions: sessionmaker[Session], *, job_id: int, error: str) -> None:
    """Mark a job failed with its reason; a failed chunk fails the job it belongs to."""
    with write_transaction(sessions) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.in_(ACTIVE_STATES))
            .values(
                state=JobState.FAILED, error=error[:4000], message="failed", finished_at=utcnow()
            )
        )
        parent_id = session.scalar(select(Job.parent_id).where(Job.id == job_id))
        if parent_id is not None:
            session.execute(
                update(Job)
                .where(Job.id == parent_id, Job.state.in_(ACTIVE_STATES))
                .values(
                    state=JobState.FAILED,
                    error=f"chunk job {job_id} failed: {error}"[:4000],
                    message="failed",
                    finished_at=utcnow(),
                )
            )


def cancel_job(session: Session, *, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if job.state not in ACTIVE_STATES:
        raise Conflict(f"job {job_id} is already {job.state}")
    job.state = JobState.CANCELLED
    job.message = "cancelled"
    job.finished_at = utcnow()
    for child in session.scalars(
        select(Job).where(Job.parent_id == job_id, Job.state.in_(ACTIVE_STATES))
    ):
        child.state = JobState.CANCELLED
        child.finished_at = utcnow()
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def reap_stale_jobs(
    sessions: sessionmaker[Session],
    *,
    sender: JobSender,
    stale_after: timedelta,
    worker: str | None = None,
    lost_database: tuple[int, str] | None = None,
) -> list[int]:
    """Jobs whose worker stopped sending heartbeats, or whose attempt lost the database
    (``lost_database``: job id, error), go back on the queue (or fail after
    :data:`MAX_ATTEMPTS`). Returns the ids put back on the queue."""
    requeued: list[int] = []
    cutoff = utcnow() - stale_after
    why = f"database connection lost: {lost_database[1][:300]}" if lost_database else None
    with write_transaction(sessions) as session:
        # a job whose chunk jobs are still under way is waiting, not lost
        child = aliased(Job)
        waiting = (
            select(child.id)
            .where(child.parent_id == Job.id, child.state.in_(ACTIVE_STATES))
            .exists()
        )
        query = select(Job).where(Job.state == JobState.RUNNING, ~waiting)
        if lost_database is not None:
            query = query.where(Job.id == lost_database[0])
        elif worker is not None:
            query = query.where(Job.worker == worker)
        else:
            query = query.where(or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
        stale = list(session.scalars(query))
        for job in stale:
            lost = why or f"worker lost ({job.worker}): no heartbeat since {job.heartbeat_at}"
            if job.attempts >= MAX_ATTEMPTS:
                job.state = JobState.FAILED
                job.error = f"{lost}; gave up after {job.attempts} attempts"
                job.finished_at = utcnow()
            else:
                job.state = JobState.QUEUED
                job.message = f"requeued: {lost} (attempt {job.attempts} of {MAX_ATTEMPTS})"
                requeued.append(job.id)
        kinds = {job.id: job.kind for job in stale}
        if stale:
            # a model the lost attempt was writing will never be finished
            fail_unfinished(session, job_ids=kinds)
    for job_id in requeued:
        sender.send(job_id=job_id, kind=kinds[job_id])
    return requeued


def resend_lost_jobs(
    sessions: sessionmaker[Session], *, sender: JobSender, older_than: timedelta
) -> list[int]:
    """Jobs still ``queued`` after ``older_than`` while their broker queue is empty: the
    broker lost their message (a Redis restarted without persistence). Send them again; a
    duplicate delivery is harmless, claiming is conditional. Returns the ids sent."""
    queue_size = getattr(sender, "queue_size", None)
    if queue_size is None:
        return []
    cutoff = utcnow() - older_than
    sent: list[tuple[int, str]] = []
    with write_transaction(sessions) as session:
        waiting = list(
            session.scalars(
                select(Job).where(
                    Job.state == JobState.QUEUED,
                    func.coalesce(Job.heartbeat_at, Job.created_at) < cutoff,
                )
            )
        )
        empty: dict[str, bool] = {}
        for job in waiting:
            queue = REGISTRY[JobKind(job.kind)].queue.value
            if queue not in empty:
                empty[queue] = queue_size(queue) == 0
            if empty[queue]:
                job.heartbeat_at = utcnow()  # resent at; at most once per ``older_than``
                job.message = "queued (message re-sent: the broker had lost it)"
                sent.append((job.id, job.kind))
    for job_id, kind in sent:
        sender.send(job_id=job_id, kind=kind)
    return [job_id for job_id, _ in sent]


def active_jobs(session: Session, *, dataset_id: int, kinds: tuple[str, ...]) -> list[Job]:
    return list(
        session.scalars(
            select(Job).where(
                and_(
                    Job.dataset_id == dataset_id, Job.kind.in_(kinds), Job.state.in_(ACTIVE_STATES)
                )
            )
        )
    )


def record_params(session: Session, *, job_id: int, params: dict[str, Any], message: str) -> None:
    """What a step decided while planning (e.g. a predict job's plan), kept for its retries."""
    session.execute(update(Job).where(Job.id == job_id).values(params=params, message=message))


def wait_for_chunks(
    sessions: sessionmaker[Session], *, job_id: int, result: dict[str, Any]
) -> None:
    """A running job that cut its work into chunk jobs: it stays running, with what it
    planned as its result so far, until :func:`claim_parent_finish` says all chunks are done."""
    with write_transaction(sessions) as session:
        session.execute(
            update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING).values(result=result)
        )


def requeue_unfinished_children(session: Session, *, parent_id: int) -> list[int]:
    """A retried parent: its chunk jobs that did not succeed go back on the queue (ids)."""
    pending = []
    for child in session.scalars(select(Job).where(Job.parent_id == parent_id)):
        if child.state in (JobState.FAILED, JobState.CANCELLED):
            child.state, child.error, child.attempts = JobState.QUEUED, None, 0
        if child.state == JobState.QUEUED:
            pending.append(child.id)
    session.flush()
    return pending


def claim_parent_finish(sessions: sessionmaker[Session], *, parent_id: int) -> Job | None:
    """Record a finished chunk on its parent; when every chunk has succeeded, exactly one
    caller gets the parent back (to finish it), everyone else ``None``."""
    with write_transaction(sessions) as session:
        lock = select(Job).where(Job.id == parent_id)
        if session.get_bind().dialect.name == "postgresql":
            lock = lock.with_for_update()
        parent = session.scalar(lock)
        if parent is None or parent.state != JobState.RUNNING or parent.progress >= 1.0:
            return None
        states = dict(
            session.execute(
                select(Job.state, func.count(Job.id))
                .where(Job.parent_id == parent_id)
                .group_by(Job.state)
            ).all()
        )
        total = sum(states.values())
        done = states.get(JobState.SUCCEEDED, 0)
        verb = "predicted" if parent.kind == JobKind.PREDICT else "scored"
        parent.message = f"{done} of {total} chunks {verb}"
        parent.heartbeat_at = utcnow()
        if done < total:
            parent.progress = done / max(total, 1) * 0.99
            return None
        # the conditional update makes the finish happen once even without row locks
        won = session.execute(
            update(Job)
            .where(Job.id == parent_id, Job.state == JobState.RUNNING, Job.progress < 1.0)
            .values(progress=1.0, message=f"{total} chunks done, finishing")
        ).rowcount
        if won != 1:
            return None
        session.refresh(parent)
        session.expunge(parent)
        return parent
