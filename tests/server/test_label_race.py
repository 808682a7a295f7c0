"""Labelling a task on PostgreSQL: the label insert and the task update are one statement; a
twin request with the same idempotency key that waited on the first gets the first label; the
same statement answers whether a training may start."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from server.annotation.tasks import label_task
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker
from server.db.tables import AnnotationTask, Label
from tests import factories as make


@pytest.fixture
def sessions(pg_url: str) -> Iterator[sessionmaker[Session]]:
    migrate.upgrade(pg_url)
    engine = make_engine(pg_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_a_twin_label_request_waits_and_gets_the_first_label(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session:
        ds = make.dataset(session)
        someone = make.annotator(session)
        task = make.task(session, ds, grid_index=3, status="leased", lease_holder_id=someone.id)
        session.commit()
        task_id, annotator_id = task.id, someone.id

    first = sessions()
    twin_result: dict[str, object] = {}
    try:
        me = first.get(type(someone), annotator_id)
        label, created, may_start, _audit = label_task(
            first, task_id=task_id, annotator=me, label="artifact",
            artifact_type="fold", source="api", idempotency_key="k-1", ask_training=True,
        )  # fmt: skip
        assert created
        assert not may_start, "no autoencoder yet: nothing to fine-tune from"
        closed = first.get(AnnotationTask, task_id)
        assert closed is not None and closed.status == "labelled"
        assert not first.dirty, "the statement updated the task; nothing left to flush"

        def twin() -> None:
            with sessions() as other:
                who = other.get(type(someone), annotator_id)
                got, was_created, *_ = label_task(
                    other, task_id=task_id, annotator=who, label="artifact",
                    artifact_type="fold", source="api", idempotency_key="k-1",
                )  # fmt: skip
                other.commit()
                twin_result.update(id=got.id, created=was_created)

        thread = threading.Thread(target=twin)
        thread.start()
        time.sleep(0.5)  # the twin now waits on the task's row lock
        assert thread.is_alive()
        first.commit()
        thread.join(timeout=10)
        assert not thread.is_alive()
    finally:
        first.close()
    assert twin_result == {"id": label.id, "created": False}
    with sessions() as session:
        assert session.scalar(select(func.count(Label.id))) == 1
        stored = session.get(AnnotationTask, task_id)
        assert stored is not None and stored.status == "labelled"
        assert stored.lease_holder_id == annotator_id and stored.lease_expires_at is None


def test_labelling_answers_whether_a_training_may_start(sessions: sessionmaker[Session]) -> None:
    """On PostgreSQL the answer rides in the labelling statement; it must be the rule of
    training_may_start: an autoencoder is ready, and no training runs unless one waits."""
    from server.db.tables import Job
    from server.labels.service import training_may_start

    with sessions() as session:
        ds = make.dataset(session)
        someone = make.annotator(session)
        answers = []
        for grid_index, setup in enumerate(("no ae", "ae", "running", "running+queued")):
            if setup == "ae":
                make.version(session, ds)
            if setup.startswith("running"):
                session.add(Job(dataset_id=ds.id, kind="train", state=setup.split("+")[-1]))
            task = make.task(
                session, ds, grid_index=grid_index, status="leased", lease_holder_id=someone.id
            )
            session.flush()
            rule = training_may_start(session, dataset_id=ds.id)
            labelled = label_task(
                session, task_id=task.id, annotator=someone, label="clean",
                artifact_type=None, source="api", idempotency_key=None, ask_training=True,
            )  # fmt: skip
            assert labelled.created and labelled.training_may_start == rule
            answers.append(rule)
        assert answers == [False, True, False, True]
