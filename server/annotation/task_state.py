"""Task status: the only module that writes an annotation task's status (and the lease that
goes with it). Routers and services call it; statements that change many tasks at once take
their values from it.

A task is ``open`` in the queue, ``leased`` to one annotator until the lease expires,
``labelled`` once as many distinct annotators as it wants gave a verdict (until then it goes
back to ``open`` after each label), ``retired`` when its batch was replaced before anyone
took it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, case
from sqlalchemy.orm.attributes import set_committed_value

from server.db.tables import AnnotationTask
from server.db.vocabulary import TaskStatus

# tasks a person holds or has answered: acquisition proposes them no more
TAKEN: tuple[TaskStatus, ...] = (TaskStatus.LEASED, TaskStatus.LABELLED)
# tasks waiting for a person: a new batch retires the proposals among them
WAITING: tuple[TaskStatus, ...] = (TaskStatus.OPEN, TaskStatus.EXPIRED)


def new_task() -> dict[str, Any]:
    """The status columns of a task just made: open."""
    return {"status": TaskStatus.OPEN}


def reopened() -> dict[str, Any]:
    """Back in the queue, nobody's lease (released, skipped, expired, surplus)."""
    return {"status": TaskStatus.OPEN, "lease_holder_id": None, "lease_expires_at": None}


def leased(*, holder_id: Any, expires: Any) -> dict[str, Any]:
    """Leased to annotator ``holder_id`` until ``expires`` (values or bound parameters)."""
    return {"status": TaskStatus.LEASED, "lease_holder_id": holder_id, "lease_expires_at": expires}


def labelled(*, holder_id: Any) -> dict[str, Any]:
    """Answered by annotator ``holder_id``: no lease runs any more."""
    return {"status": TaskStatus.LABELLED, "lease_holder_id": holder_id, "lease_expires_at": None}


def answered(*, holder_id: Any, complete: bool) -> dict[str, Any]:
    """A label arrived: labelled once the task has labels from as many distinct annotators as
    it wants (``complete``), else back in the queue for another annotator."""
    return labelled(holder_id=holder_id) if complete else reopened()


def answered_in_sql(*, holder_id: Any, complete: ColumnElement[bool]) -> dict[str, Any]:
    """:func:`answered` for a statement: ``complete`` is decided by the database."""
    return {
        "status": case((complete, TaskStatus.LABELLED.value), else_=TaskStatus.OPEN.value),
        "lease_holder_id": case((complete, holder_id), else_=None),
        "lease_expires_at": None,
    }


def retired() -> dict[str, Any]:
    """Its batch was replaced before anyone took it."""
    return {"status": TaskStatus.RETIRED}


def finished_elsewhere() -> dict[str, Any]:
    """Labelled outside the service (a finished webKnossos task); its lease, if any, stays."""
    return {"status": TaskStatus.LABELLED}


def set_state(task: AnnotationTask, values: dict[str, Any]) -> AnnotationTask:
    """Give a loaded task the ``values`` of one of the transitions above."""
    for column, value in values.items():
        setattr(task, column, value)
    return task


def record_written(task: AnnotationTask, values: dict[str, Any]) -> None:
    """A statement already wrote ``values`` to the task's row: record them on the loaded
    task without making it dirty (no second UPDATE on commit)."""
    for column, value in values.items():
        set_committed_value(task, column, value)
