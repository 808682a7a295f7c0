"""Celery configuration shared by the API (which only sends tasks by name) and the workers.

Queue and task names are constants here so that the API never imports task code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Protocol

from server.settings import Settings

QUEUE_GPU: Final = "gpu"
QUEUE_IO: Final = "io"

TASK_RUN_JOB: Final = "artifact_loop.run_job"
TASK_RUN_JOB_IO: Final = "artifact_loop.run_io_job"

# Which queue each job kind runs on.
JOB_QUEUE: Final[dict[str, str]] = {
    "pretrain": QUEUE_GPU,
    "train": QUEUE_GPU,
    "score": QUEUE_GPU,
    "score_chunk": QUEUE_GPU,
    "predict": QUEUE_GPU,
    "predict_chunk": QUEUE_GPU,
    "propose": QUEUE_IO,
    "sync": QUEUE_IO,
    "import": QUEUE_IO,
}


def task_name_for(kind: str) -> str:
    return TASK_RUN_JOB if JOB_QUEUE[kind] == QUEUE_GPU else TASK_RUN_JOB_IO


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


class CeleryJobSender:
    def __init__(self, app: Any, *, expires_s: int) -> None:
        self._app = app
        self._expires_s = expires_s

    def send(self, *, job_id: int, kind: str) -> str | None:
        result = self._app.send_task(
            task_name_for(kind), args=[job_id], queue=JOB_QUEUE[kind], expires=self._expires_s
        )
        return str(result.id) if result is not None else None

    def ping_broker(self, timeout: float = 2.0) -> None:
        with self._app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
