"""Thin Celery tasks: take a job id and run it (server.jobs.runner); all state lives in the
database. A reaper thread puts jobs of lost workers back on the queue."""

from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import timedelta
from functools import lru_cache
from typing import Any

from celery import Task
from celery.signals import worker_ready

from server.errors import Conflict
from server.jobs import state
from server.jobs.queue import TASK_RUN_JOB, TASK_RUN_JOB_IO, CeleryJobSender
from server.jobs.runner import run_job as run_claimed_job
from server.pipeline.sync import periodic_sync
from server.runtime import Runtime
from worker.app import celery_app

log = logging.getLogger(__name__)

STALE_AFTER = timedelta(seconds=90)


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    return Runtime.start()


@lru_cache(maxsize=1)
def sender() -> CeleryJobSender:
    return CeleryJobSender(celery_app, expires_s=runtime().settings.task_expires_s)


@celery_app.task(name=TASK_RUN_JOB, bind=True, acks_late=True, max_retries=None)
def run_job(self: Task, job_id: int) -> None:
    _run(self, job_id)


@celery_app.task(name=TASK_RUN_JOB_IO, bind=True, acks_late=True, max_retries=None)
def run_io_job(self: Task, job_id: int) -> None:
    _run(self, job_id)


def _run(task: Task, job_id: int) -> None:
    name = f"{task.request.hostname or socket.gethostname()}"
    try:
        run_claimed_job(runtime(), sender(), job_id=job_id, worker=name)
    except Conflict as exc:
        # another pretrain/train of the same dataset is running: try again shortly
        raise task.retry(countdown=10, exc=exc) from None


def reap_jobs(*, own_worker: str | None = None) -> list[int]:
    """Requeue jobs whose worker died: those with a stale heartbeat, and at start-up those
    that a previous process of this very worker left running."""
    rt = runtime()
    requeued = []
    if own_worker:
        # what a previous process of this very worker left running is dead
        requeued += state.reap_stale_jobs(
            rt.sessions, sender=sender(), stale_after=timedelta(0), worker=own_worker
        )
    requeued += state.reap_stale_jobs(rt.sessions, sender=sender(), stale_after=STALE_AFTER)
    requeued += state.resend_lost_jobs(
        rt.sessions, sender=sender(), older_than=timedelta(seconds=rt.settings.resend_after_s)
    )
    return requeued


def _reaper_loop(worker: str) -> None:
    first = True
    next_sync = time.monotonic() + 10
    while True:
        try:
            ids = reap_jobs(own_worker=worker if first else None)
            if ids:
                log.warning("requeued jobs of lost workers or lost messages: %s", ids)
        except Exception:
            log.warning("reaping stale jobs failed", exc_info=True)
        every = runtime().settings.wk_sync_every_s
        if every > 0 and time.monotonic() >= next_sync:
            next_sync = time.monotonic() + every
            try:
                started = periodic_sync(runtime(), sender())
                if started:
                    log.info("periodic webKnossos sync jobs: %s", started)
            except Exception:
                log.warning("starting periodic webKnossos syncs failed", exc_info=True)
        first = False
        threading.Event().wait(min(REAP_EVERY_S, every) if every > 0 else REAP_EVERY_S)


REAP_EVERY_S = 15


@worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    threading.Thread(target=_reaper_loop, args=(hostname,), daemon=True, name="job-reaper").start()
