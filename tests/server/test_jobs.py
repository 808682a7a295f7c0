"""Job bookkeeping on SQLite and PostgreSQL: claims, coalescing, the reaper, failures."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope, utcnow
from server.db.tables import Dataset, Job
from server.errors import Conflict
from server.jobs import state as jobs
from server.jobs.queue import CeleryJobSender, make_celery
from server.settings import Settings


@pytest.fixture
def env(db_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, broker_url="filesystem://")
    sender = CeleryJobSender(make_celery(settings), expires_s=60)
    with session_scope(sessions) as session:
        dataset = Dataset(
            name="d", path="/nowhere", layer="color", mag="1-1-1", data_format="zarr3", voxel_size=[32, 32, 35],
            bbox_x=0, bbox_y=0, bbox_z=0, bbox_w=280, bbox_h=280, bbox_d=2, norm_mean=148.0, norm_std=36.0,
        )  # fmt: skip
        session.add(dataset)
        session.flush()
        dataset_id = dataset.id
    yield sessions, sender, dataset_id, settings.broker_dir / "queue"
    engine.dispose()


def _messages(folder: Path) -> list[dict]:
    found = []
    for path in folder.glob("*.msg"):
        body = json.loads(path.read_text())
        found.append(body)
    return found


def test_start_sends_and_claim_runs_once(env) -> None:  # type: ignore[no-untyped-def]
    sessions, sender, dataset_id, queue = env
    with session_scope(sessions) as session:
        started = jobs.start_job(
            session, sender=sender, kind="score", dataset_id=dataset_id, requested_by="admin"
        )
    assert not started.coalesced
    assert len(_messages(queue)) == 1
    claimed = jobs.claim_job(sessions, job_id=started.job.id, worker="w1")
    assert claimed is not None and claimed.state == "running" and claimed.attempts == 1
    # a redelivered message finds the job running and does nothing
    assert jobs.claim_job(sessions, job_id=started.job.id, worker="w2") is None
    jobs.finish_job(sessions, job_id=started.job.id, result={"ok": 1})
    assert jobs.claim_job(sessions, job_id=started.job.id, worker="w3") is None
    with session_scope(sessions) as session:
        job = jobs.get_job(session, started.job.id)
        assert (job.state, job.progress, job.result, job.worker) == (
            "succeeded",
            1.0,
            {"ok": 1},
            "w1",
        )


def test_training_requests_coalesce_and_run_one_at_a_time(env) -> None:  # type: ignore[no-untyped-def]
    sessions, sender, dataset_id, _queue = env
    with session_scope(sessions) as session:
        first = jobs.start_job(session, sender=sender, kind="train", dataset_id=dataset_id).job
    with session_scope(sessions) as session:
        again = jobs.start_job(session, sender=sender, kind="train", dataset_id=dataset_id)
    assert again.coalesced and again.job.id == first.id
    assert jobs.claim_job(sessions, job_id=first.id, worker="w1") is not None
    with session_scope(sessions) as session:
        second = jobs.start_job(session, sender=sender, kind="train", dataset_id=dataset_id)
    assert not second.coalesced
    with pytest.raises(Conflict):
        jobs.claim_job(sessions, job_id=second.job.id, worker="w2")
    jobs.finish_job(sessions, job_id=first.id)
    assert jobs.claim_job(sessions, job_id=second.job.id, worker="w2") is not None


def test_reaper_requeues_then_fails(env) -> None:  # type: ignore[no-untyped-def]
    sessions, sender, dataset_id, queue = env
    with session_scope(sessions) as session:
        job = jobs.start_job(session, sender=sender, kind="pretrain", dataset_id=dataset_id).job
    for attempt in range(1, jobs.MAX_ATTEMPTS + 1):
        assert jobs.claim_job(sessions, job_id=job.id, worker="w") is not None
        with session_scope(sessions) as session:
            session.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(heartbeat_at=utcnow() - timedelta(minutes=10))
            )
        requeued = jobs.reap_stale_jobs(sessions, sender=sender, stale_after=timedelta(minutes=1))
        with session_scope(sessions) as session:
            state = jobs.get_job(session, job.id)
        if attempt < jobs.MAX_ATTEMPTS:
            assert requeued == [job.id] and state.state == "queued"
        else:
            assert (
                requeued == [] and state.state == "failed" and "worker lost" in (state.error or "")
            )
    assert len(_messages(queue)) == jobs.MAX_ATTEMPTS


def test_fresh_heartbeat_and_waiting_parents_are_not_reaped(env) -> None:  # type: ignore[no-untyped-def]
    sessions, sender, dataset_id, _queue = env
    with session_scope(sessions) as session:
        parent = jobs.start_job(session, sender=sender, kind="score", dataset_id=dataset_id).job
    jobs.claim_job(sessions, job_id=parent.id, worker="w")
    with session_scope(sessions) as session:
        child = jobs.create_job(
            session,
            kind="score_chunk",
            dataset_id=dataset_id,
            parent_id=parent.id,
            params={"model_version_id": 1, "chunk": 0, "start": 0, "stop": 4},
        )
        session.execute(
            update(Job)
            .where(Job.id == parent.id)
            .values(heartbeat_at=utcnow() - timedelta(hours=1))
        )
    assert jobs.reap_stale_jobs(sessions, sender=sender, stale_after=timedelta(minutes=1)) == []
    # a failed chunk fails the scoring run with the reason
    jobs.claim_job(sessions, job_id=child.id, worker="w")
    jobs.fail_job(sessions, job_id=child.id, error="disk full")
    with session_scope(sessions) as session:
        assert jobs.get_job(session, parent.id).state == "failed"
        assert "disk full" in (jobs.get_job(session, parent.id).error or "")


def test_cancel_stops_progress(env) -> None:  # type: ignore[no-untyped-def]
    sessions, sender, dataset_id, _queue = env
    with session_scope(sessions) as session:
        job = jobs.start_job(session, sender=sender, kind="predict", dataset_id=dataset_id).job
    jobs.claim_job(sessions, job_id=job.id, worker="w")
    jobs.report_progress(sessions, job_id=job.id, progress=0.5, message="half")
    with session_scope(sessions) as session:
        jobs.cancel_job(session, job_id=job.id)
    with pytest.raises(jobs.JobCancelled):
        jobs.report_progress(sessions, job_id=job.id, progress=0.6)
    with session_scope(sessions) as session, pytest.raises(Conflict):
        jobs.cancel_job(session, job_id=job.id)


def test_filesystem_broker_keeps_all_its_folders_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", broker_url="filesystem://")
    app = make_celery(settings)
    options = app.conf.broker_transport_options
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        assert Path(options[key]).is_relative_to(settings.broker_dir), key
        assert Path(options[key]).is_dir(), key
