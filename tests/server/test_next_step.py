"""The labeling page's line on what comes next: true while the first scoring runs."""

from __future__ import annotations

from server.annotation.progress import next_step
from server.db.tables import Job


def _job(kind: str, state: str = "running", progress: float = 0.4) -> Job:
    return Job(kind=kind, state=state, progress=progress, params={}, result={})


def test_the_waiting_line_says_what_the_loop_waits_for() -> None:
    assert next_step(training=None, busy=None, until=7) == "next training after 7 more labels"
    assert next_step(training=None, busy=None, until=1) == "next training after 1 more label"
    assert next_step(training=None, busy=None, until=0) == "a training starts with the next label"
    # the first scoring runs: labels are due, the training waits for it (never "after 0")
    line = next_step(training=None, busy=_job("score"), until=0)
    assert line == "scoring the pool 40 % · a training is due: it starts when this is done"
    assert "0 more" not in line
    assert next_step(training=None, busy=_job("pretrain", progress=0.1), until=5) == (
        "pretraining the autoencoder 10 % · next training after 5 more labels"
    )
    queued = _job("train", state="queued", progress=0.0)
    assert next_step(training=queued, busy=_job("score"), until=0) == "training queued 0 %"
