"""The Celery app the workers run::

    celery -A worker.app worker -Q gpu --pool solo --prefetch-multiplier 1   # GPU work
    celery -A worker.app worker -Q io                                      # bookkeeping

Creating it connects to nothing; the broker URL comes from ``ARTIFACT_LOOP_BROKER_URL``.
"""

from __future__ import annotations

from server.jobs.queue import make_celery
from server.settings import get_settings

celery_app = make_celery(get_settings(), include=["worker.tasks"])
app = celery_app
