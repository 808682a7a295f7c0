"""Labelling a task on PostgreSQL: the label insert and the task update are one statement; a
twin request with the same idempotency key that waited on the first gets the first label."""

from __future__ import annotations

import threading
import time

from sqlalchemy import func, select

from server.annotation.tasks import label_task
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker
from server.db.tables import AnnotationTask, Label
from tests import factories as make


def test_a_twin_label_request_waits_and_gets_the_first_label(pg_url: str) -> None:
    migrate.upgrade(pg_url)
    engine = make_engine(pg_url)
    sessions = make_sessionmaker(engine)
    try:
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
            label, created = label_task(
                first, task_id=task_id, annotator=me, label="artifact",
                artifact_type="fold", source="api", idempotency_key="k-1",
            )  # fmt: skip
            assert created
            closed = first.get(AnnotationTask, task_id)
            assert closed is not None and closed.status == "labelled"
            assert not first.dirty, "the statement updated the task; nothing left to flush"

            def twin() -> None:
                with sessions() as other:
                    who = other.get(type(someone), annotator_id)
                    got, was_created = label_task(
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
    finally:
        engine.dispose()
