"""Thin Celery tasks: take a job id, claim the job, run its handler, record the outcome.

All logic lives in ``server.pipeline.loop``; all state lives in the database.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import traceback
from datetime import timedelta
from functools import lru_cache
from typing import Any

from celery import Task
from celery.signals import worker_ready

from server.errors import ArtifactLoopError, Conflict
from server.jobs import state as jobs
from server.jobs.queue import TASK_RUN_JOB, TASK_RUN_JOB_IO, CeleryJobSender
from server.runtime import Runtime
from worker.app import celery_app

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
STALE_AFTER = timedelta(seconds=90)


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    return Runtime.start()


@lru_cache(maxsize=1)
def sender() -> CeleryJobSender:
    return CeleryJobSender(celery_app, expires_s=runtime().settings.task_expires_s)


def worker_name() -> str:
    return f"{socket.gethostname()}:{threading.get_native_id()}"


@celery_app.task(name=TASK_RUN_JOB, bind=True, acks_late=True, max_retries=None)
def run_job(self: Task, job_id: int) -> None:
    _run(self, job_id)


@celery_app.task(name=TASK_RUN_JOB_IO, bind=True, acks_late=True, max_retries=None)
def run_io_job(self: Task, job_id: int) -> None:
    _run(self, job_id)


def _run(task: Task, job_id: int) -> None:
    from server.pipeline import loop

    rt = runtime()
    name = f"{task.request.hostname or socket.gethostname()}"
    try:
        job = jobs.claim_job(rt.sessions, job_id=job_id, worker=name)
    except Conflict as exc:
        # another pretrain/train of the same dataset is running: try again shortly
        raise task.retry(countdown=10, exc=exc) from None
    if job is None:
        log.info("job %s is not claimable (already done, cancelled or running elsewhere)", job_id)
        return
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(rt, job_id, stop), daemon=True, name=f"heartbeat-{job_id}"
    )
    beat.start()
    try:
        result = loop.run_job_handler(rt, job, sender())
    except jobs.JobCancelled:
        log.info("job %s was cancelled", job_id)
    except ArtifactLoopError as exc:
        jobs.fail_job(rt.sessions, job_id=job_id, error=str(exc))
    except Exception as exc:
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        jobs.fail_job(rt.sessions, job_id=job_id, error=f"{type(exc).__name__}: {exc}")
    else:
        if result.get(loop.DETACHED):
            # finishes when its chunk jobs do (see loop.after_job)
            _record_detached(rt, job_id, result)
        else:
            jobs.finish_job(rt.sessions, job_id=job_id, result=result)
            loop.after_job(rt, job_id=job_id, sender=sender())
    finally:
        stop.set()
        beat.join(timeout=5)


def _record_detached(rt: Runtime, job_id: int, result: dict[str, Any]) -> None:
    from sqlalchemy import update

    from server.db.base import write_transaction
    from server.db.tables import Job

    with write_transaction(rt.sessions) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(result={k: v for k, v in result.items() if not k.startswith("_")})
        )


def _heartbeat(rt: Runtime, job_id: int, stop: threading.Event) -> None:
    from sqlalchemy import update

    from server.db.base import utcnow, write_transaction
    from server.db.tables import Job

    while not stop.wait(HEARTBEAT_S):
        try:
            with write_transaction(rt.sessions) as session:
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == "running")
                    .values(heartbeat_at=utcnow())
                )
        except Exception:  # a missed heartbeat is not fatal
            log.warning("heartbeat for job %s failed", job_id, exc_info=True)


def reap_jobs(*, own_worker: str | None = None) -> list[int]:
    """Requeue jobs whose worker died: those with a stale heartbeat, and at start-up those
    that a previous process of this very worker left running."""
    rt = runtime()
    requeued = []
    if own_worker:
        requeued += jobs.requeue_jobs_of_worker(rt.sessions, worker=own_worker, sender=sender())
    requeued += jobs.reap_stale_jobs(rt.sessions, sender=sender(), stale_after=STALE_AFTER)
    return requeued


def _reaper_loop(worker: str) -> None:
    first = True
    next_sync = time.monotonic() + 10
    while True:
        try:
            ids = reap_jobs(own_worker=worker if first else None)
            if ids:
                log.warning("requeued jobs of lost workers: %s", ids)
        except Exception:
            log.warning("reaping stale jobs failed", exc_info=True)
        every = runtime().settings.wk_sync_every_s
        if every > 0 and time.monotonic() >= next_sync:
            next_sync = time.monotonic() + every
            try:
                from server.pipeline.loop import periodic_sync

                started = periodic_sync(runtime(), sender())
                if started:
                    log.info("periodic webKnossos sync jobs: %s", started)
            except Exception:
                log.warning("starting periodic webKnossos syncs failed", exc_info=True)
        first = False
        threading.Event().wait(min(30, every) if every > 0 else 30)


@worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    threading.Thread(target=_reaper_loop, args=(hostname,), daemon=True, name="job-reaper").start()
