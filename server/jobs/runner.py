"""Running one job: claim it, run its kind's step, record the outcome, start what follows.

The Celery worker and ``simulate`` both run jobs through :func:`run_job`; the registry says
which step a kind runs and what follows it. Chunk jobs finish their parent here too: the
last chunk to succeed calls the parent kind's ``chunks_done``, and the parent then finishes
like any other job.
"""

from __future__ import annotations

import logging
import threading
import traceback
from datetime import timedelta
from typing import Any

from server.db.base import DATABASE_DOWN, write_transaction
from server.db.tables import Job
from server.errors import ArtifactLoopError
from server.jobs import state
from server.jobs.context import Chunked, StepContext
from server.jobs.kinds import JobKind, JobState
from server.jobs.queue import JobSender
from server.jobs.registry import REGISTRY, resolve
from server.runtime import Runtime

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0


def run_job(rt: Runtime, sender: JobSender, *, job_id: int, worker: str) -> bool:
    """Run job ``job_id`` if it can be claimed; ``False`` when it was not claimable. Raises
    :class:`server.errors.Conflict` when an exclusive job of its dataset is running."""
    job = state.claim_job(rt.sessions, job_id=job_id, worker=worker)
    if job is None:
        log.info("job %s is not claimable (done, cancelled or running elsewhere)", job_id)
        return False
    ctx = StepContext(rt=rt, sender=sender)
    spec = REGISTRY[JobKind(job.kind)]
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(rt, job_id, stop), daemon=True, name=f"heartbeat-{job_id}"
    )
    beat.start()
    try:
        outcome = resolve(spec.run)(ctx, job)
    except state.JobCancelled:
        log.info("job %s was cancelled", job_id)
        return True
    except ArtifactLoopError as exc:
        state.fail_job(rt.sessions, job_id=job_id, error=str(exc))
        return True
    except DATABASE_DOWN as exc:
        # the connection was killed or the server restarted: nothing is wrong with the job,
        # so it is retried like one whose worker was lost (if the database is still down,
        # this raises, and the reaper requeues the job once its heartbeat is stale)
        error = " ".join(str(exc).split("\n")[0].split())
        log.warning("job %s lost its database connection (%s): retrying it", job_id, error)
        state.reap_stale_jobs(
            rt.sessions, sender=sender, stale_after=timedelta(0), lost_database=(job_id, error)
        )
        return True
    except Exception as exc:
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        state.fail_job(rt.sessions, job_id=job_id, error=f"{type(exc).__name__}: {exc}")
        return True
    finally:
        stop.set()
        beat.join(timeout=5)
    if isinstance(outcome, Chunked):
        state.wait_for_chunks(rt.sessions, job_id=job_id, result=outcome.result)
        for child_id in outcome.children:
            sender.send(job_id=child_id, kind=outcome.child_kind)
        _finish_parent_when_done(ctx, parent_id=job_id)  # nothing left to wait for
    else:
        state.finish_job(rt.sessions, job_id=job_id, result=outcome)
        _follow(ctx, job_id)
    if job.parent_id is not None:
        _finish_parent_when_done(ctx, parent_id=job.parent_id)
    return True


def _finish_parent_when_done(ctx: Any, *, parent_id: int) -> None:
    parent = state.claim_parent_finish(ctx.sessions, parent_id=parent_id)
    if parent is None:
        return
    spec = REGISTRY[JobKind(parent.kind)]
    assert spec.chunks_done is not None, f"{parent.kind} jobs have no chunks"
    try:
        result = resolve(spec.chunks_done)(ctx, parent)
    except Exception as exc:  # e.g. a chunk's summary is missing or unreadable
        log.error("finishing job %s failed:\n%s", parent_id, traceback.format_exc())
        state.fail_job(ctx.sessions, job_id=parent_id, error=f"{type(exc).__name__}: {exc}")
        return
    state.finish_job(ctx.sessions, job_id=parent_id, result=result)
    _follow(ctx, parent_id)


def _follow(ctx: Any, job_id: int) -> None:
    """Start what follows a succeeded job (its kind's ``follows``)."""
    with write_transaction(ctx.sessions) as session:
        job = session.get(Job, job_id)
        if job is None or job.state != JobState.SUCCEEDED:
            return
        session.expunge(job)
    follows = REGISTRY[JobKind(job.kind)].follows
    if follows is not None:
        resolve(follows)(ctx, job)


def _heartbeat(rt: Runtime, job_id: int, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            state.heartbeat(rt.sessions, job_id=job_id)
        except Exception:  # a missed heartbeat is not fatal
            log.warning("heartbeat for job %s failed", job_id, exc_info=True)


class InlineSender:
    """A queue inside one process: jobs are run by :meth:`run_pending`, one after another.
    ``simulate`` replays the loop with it; a worker uses the broker instead."""

    def __init__(self) -> None:
        self.pending: list[int] = []

    def send(self, *, job_id: int, kind: str) -> str | None:
        self.pending.append(job_id)
        return None

    def run_pending(self, rt: Runtime, *, worker: str = "inline") -> int:
        """Run queued jobs (and what they start) until none is left; how many ran."""
        ran = 0
        while self.pending:
            ran += run_job(rt, self, job_id=self.pending.pop(0), worker=worker)
        return ran
