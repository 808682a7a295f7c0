"""The Celery app the workers run::

    celery -A worker.app worker -Q gpu --pool solo --prefetch-multiplier 1   # GPU work
    celery -A worker.app worker -Q io                                      # bookkeeping

Creating it connects to nothing; the broker URL comes from ``ARTIFACT_LOOP_BROKER_URL``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.signals import worker_init

from server.jobs.queue import make_celery
from server.settings import get_settings

celery_app = make_celery(get_settings(), include=["worker.tasks"])
app = celery_app
log = logging.getLogger(__name__)


@worker_init.connect
def lower_priority(**_: Any) -> None:
    """A worker started on the API's machine yields the cores to annotators' requests:
    ``ARTIFACT_LOOP_WORKER_NICE`` (default 10) is added to its niceness, which its pool
    processes inherit. Fired in the worker only, never in the API."""
    step = get_settings().worker_nice
    if step:
        log.info("worker niceness %d", os.nice(step))
