"""Celery configuration shared by the API (which only sends tasks by name) and the workers.

Queue and task names are constants here so that the API never imports task code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from server.jobs.kinds import Queue
from server.jobs.registry import spec_of
from server.settings import Settings

log = logging.getLogger("artifact_loop.jobs")

QUEUE_GPU: Final = Queue.GPU.value
QUEUE_IO: Final = Queue.IO.value

TASK_RUN_JOB: Final = "artifact_loop.run_job"
TASK_RUN_JOB_IO: Final = "artifact_loop.run_io_job"
TASK_OF_QUEUE: Final = {Queue.GPU: TASK_RUN_JOB, Queue.IO: TASK_RUN_JOB_IO}


def queue_of(kind: str) -> Queue:
    """The queue a job kind runs on (from the registry)."""
    return spec_of(kind).queue


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": QUEUE_IO,
        "task_routes": {TASK_RUN_JOB: {"queue": QUEUE_GPU}, TASK_RUN_JOB_IO: {"queue": QUEUE_IO}},
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
    }
    if settings.broker_url.startswith("filesystem"):
        folder = str(settings.broker_dir / "queue")
        config["broker_transport_options"] = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "processed_folder": str(settings.broker_dir / "processed"),
            "store_processed": False,
            # exchange tables (broadcast, pidbox); kombu's default is ./control
            "control_folder": str(settings.broker_dir / "control"),
        }
    return config


def make_celery(settings: Settings, *, include: Sequence[str] = ()) -> Any:
    """A Celery app for ``settings``; the worker passes ``include`` to register its tasks."""
    # celery only where a sender or worker is made, not for the queue names
    from celery import Celery

    if settings.broker_url.startswith("filesystem"):
        (settings.broker_dir / "queue").mkdir(parents=True, exist_ok=True)
        (settings.broker_dir / "processed").mkdir(parents=True, exist_ok=True)
        (settings.broker_dir / "control").mkdir(parents=True, exist_ok=True)
    app = Celery("artifact_loop", include=list(include))
    app.conf.update(celery_config(settings))
    return app


class JobSender(Protocol):
    """Puts a job id onto its queue. The API and workers hold one; tests may hold a real one
    pointed at a test broker."""

    def send(self, *, job_id: int, kind: str) -> str | None: ...


def broker_errors() -> tuple[type[Exception], ...]:
    """Errors of the Celery client when it cannot reach the broker."""
    from kombu.exceptions import OperationalError as KombuOperationalError

    found: list[type[Exception]] = [KombuOperationalError]
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        found += [RedisConnectionError, RedisTimeoutError]
    except ImportError:  # pragma: no cover - the filesystem broker needs no redis client
        pass
    return tuple(found)


class SendLater:
    """A sender for jobs that follow from what was just committed (a training that labels
    started): the job's row is the truth, so an unreachable broker is logged, not raised.
    The worker's reaper sends the job again once the broker answers
    (:func:`server.jobs.state.resend_lost_jobs`)."""

    def __init__(self, sender: JobSender) -> None:
        self._sender = sender

    def send(self, *, job_id: int, kind: str) -> str | None:
        try:
            return self._sender.send(job_id=job_id, kind=kind)
        except broker_errors() as exc:
            log.warning(
                "job %d (%s) is queued, but the broker is unreachable (%s): it is sent again "
                "once the broker is back",
                job_id,
                kind,
                " ".join(str(exc).split())[:200],
            )
            return None


class CeleryJobSender:
    def __init__(self, app: Any, *, expires_s: int) -> None:
        self._app = app
        self._expires_s = expires_s

    def send(self, *, job_id: int, kind: str) -> str | None:
        result = self._app.send_task(
            TASK_OF_QUEUE[queue_of(kind)],
            args=[job_id],
            queue=queue_of(kind).value,
            expires=self._expires_s,
        )
        return str(result.id) if result is not None else None

    def queue_size(self, queue: str) -> int | None:
        """Messages waiting in ``queue`` on the broker; ``None`` when it cannot be told."""
        url = self._app.conf.broker_url or ""
        try:
            if url.startswith("redis"):
                # the Redis client only on a Redis broker
                import redis

                client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
                # kombu keeps one list per priority step: "gpu", "gpu\x06\x163", ...
                return sum(int(client.llen(key)) for key in client.scan_iter(f"{queue}*"))
            if url.startswith("filesystem"):
                folder = self._app.conf.broker_transport_options.get("data_folder_in")
                return sum(1 for _ in Path(folder).glob(f"*.{queue}.msg")) if folder else None
        except Exception:
            return None
        return None

    def ping_broker(self, timeout: float = 2.0) -> None:
        with self._app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)


def sender_for(settings: Settings) -> CeleryJobSender:
    """A sender to the broker of ``settings`` (the CLI's; the API holds one for its life)."""
    return CeleryJobSender(make_celery(settings), expires_s=settings.task_expires_s)
