"""Annotation tasks: labelling, skipping and releasing a leased task, the review list and
verdict changes. Leasing itself is :mod:`server.annotation.leasing`."""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import NamedTuple, cast

from sqlalchemy import Executable, Table, bindparam, case, func, select, true, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.orm import Session, aliased

from server.annotation import task_state
from server.annotation.overlap import annotators_of
from server.annotation.prelabel import check_accepted
from server.db.base import as_utc, utcnow
from server.db.tables import AnnotationTask, Annotator, Dataset, Label, TaskSkip
from server.db.vocabulary import TaskStatus
from server.errors import Conflict, Forbidden, NotFound
from server.labels.rows import NewLabel, label_row
from server.labels.service import (
    check_key_reuse,
    create_label,
    training_may_start,
    training_state_allows,
    training_state_query,
)


def get_task(session: Session, task_id: int, *, lock: bool = False) -> AnnotationTask:
    stmt = select(AnnotationTask).where(AnnotationTask.id == task_id)
    if lock and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    task = session.scalar(stmt)
    if task is None:
        raise NotFound(f"no task {task_id}")
    return task


def _leased_by_other(task: AnnotationTask, annotator: Annotator) -> bool:
    return (
        task.status == TaskStatus.LEASED
        and task.lease_holder_id is not None
        and task.lease_holder_id != annotator.id
        and task.lease_expires_at is not None
        and as_utc(task.lease_expires_at) >= utcnow()
    )


class Labelled(NamedTuple):
    label: Label
    created: bool  # False: a repeat with the same idempotency key found the first label
    training_may_start: bool  # asked only with ``ask_training``; see training_may_start
    audit: bool = False  # a new label of an audit patch: the versions are measured again


def label_task(
    session: Session,
    *,
    task_id: int,
    annotator: Annotator,
    label: str,
    artifact_type: str | None,
    source: str,
    idempotency_key: str | None,
    ask_training: bool = False,
    from_prelabel: bool = False,
) -> Labelled:
    """Record ``annotator``'s verdict on a task. A repeat with the same idempotency key
    returns the first label; a task leased by someone else is refused. ``ask_training``:
    also answer :func:`~server.labels.service.training_may_start` for a new label (on
    PostgreSQL in the same statement that records it). ``from_prelabel``: the verdict is the
    task's pre-label, accepted (refused if it is not). A task that wants labels from more
    annotators than it has goes back to the queue (:mod:`server.annotation.overlap`)."""
    task, dataset, existing = _task_to_label(
        session, task_id=task_id, annotator=annotator, idempotency_key=idempotency_key
    )
    if existing is not None and idempotency_key:
        expect = _task_label(task, label=label, artifact_type=artifact_type)
        found = check_key_reuse(
            existing,
            key=idempotency_key,
            expect=expect,
            dataset_id=task.dataset_id,
            task_id=task.id,
        )
        return Labelled(found, False, False)
    if _leased_by_other(task, annotator):
        raise Conflict(f"task {task_id} is leased by another annotator")
    if task.status == TaskStatus.RETIRED and task.lease_holder_id != annotator.id:
        raise Conflict(f"task {task_id} was retired: ask for the next task")
    if from_prelabel:
        check_accepted(session, task, label=label)
    new = _task_label(task, label=label, artifact_type=artifact_type)
    if session.get_bind().dialect.name == "postgresql":
        inserted = _label_and_close(
            session,
            task=task,
            dataset=dataset,
            new=new,
            annotator=annotator,
            source=source,
            idempotency_key=idempotency_key,
            ask_training=ask_training,
            from_prelabel=from_prelabel,
        )
        if inserted is not None:
            return inserted
        # the same key won a race meanwhile: that request labelled the task
    created_label, created = create_label(
        session,
        dataset=dataset,
        new=new,
        annotator=annotator,
        source=source,
        source_ref=f"task:{task.id}",
        task_id=task.id,
        idempotency_key=idempotency_key,
        key_checked=True,
        from_prelabel=from_prelabel,
    )
    complete = annotators_of(session, task_id=task.id) >= task.labels_wanted
    task_state.set_state(task, task_state.answered(holder_id=annotator.id, complete=complete))
    session.flush()
    may_start = ask_training and created and training_may_start(session, dataset_id=dataset.id)
    return Labelled(created_label, created, may_start, created and task.kind == "audit")


def _label_and_close(
    session: Session,
    *,
    task: AnnotationTask,
    dataset: Dataset,
    new: NewLabel,
    annotator: Annotator,
    source: str,
    idempotency_key: str | None,
    ask_training: bool,
    from_prelabel: bool,
) -> Labelled | None:
    """PostgreSQL: insert the label and mark the task labelled in one statement (see
    :func:`_label_and_close_statement`). ``None`` when a label with the same idempotency key
    exists (a concurrent twin of this request inserted it)."""
    now = utcnow()
    values = label_row(
        dataset,
        new,
        annotator=annotator,
        source=source,
        source_ref=f"task:{task.id}",
        task_id=task.id,
        idempotency_key=idempotency_key,
        from_prelabel=from_prelabel,
    )
    values["created_at"] = now
    params = {f"lbl_{column}": value for column, value in values.items()}
    if ask_training:
        params["arrived_in"] = dataset.id
    statement = _label_and_close_statement(tuple(values), with_training=ask_training)
    row = session.execute(statement, params).first()
    if row is None:
        return None
    # what the statement wrote, without making the task dirty (no second UPDATE on commit)
    complete = row[1] == TaskStatus.LABELLED
    task_state.record_written(task, task_state.answered(holder_id=annotator.id, complete=complete))
    task_state.record_written(task, {"updated_at": now})
    return Labelled(
        row[0], True, ask_training and training_state_allows(*row[2:]), task.kind == "audit"
    )


@functools.cache
def _label_and_close_statement(columns: tuple[str, ...], *, with_training: bool) -> Executable:
    """``WITH ins AS (INSERT INTO labels ... ON CONFLICT (annotator, idempotency_key) DO
    NOTHING RETURNING *), closed AS (UPDATE annotation_tasks SET status = 'labelled' (or
    'open' while it wants another annotator) ... WHERE id = :lbl_task_id AND EXISTS (SELECT
    FROM ins) RETURNING status) SELECT ins.*, (SELECT status FROM closed)``: one round trip
    instead of an insert and an update; ``with_training`` adds the columns of
    :func:`~server.labels.service.training_state_query` (parameter ``arrived_in``), one
    round trip instead of two. Built once: building the statement cost more than running
    it. (Each value ``lbl_<column>``: a parameter named like a column would be a value to
    set in the UPDATE.)"""
    labels = cast(Table, Label.__table__)
    tasks = cast(Table, AnnotationTask.__table__)
    inserted = (
        postgresql_insert(labels)
        .values({column: bindparam(f"lbl_{column}") for column in columns})
        .on_conflict_do_nothing(index_elements=["annotator", "idempotency_key"])
        .returning(*labels.c)
        .cte("ins")
    )
    # labels of other annotators on the task (the statement does not see its own insert)
    others = (
        select(func.count(func.distinct(labels.c.annotator)))
        .where(labels.c.task_id == tasks.c.id, labels.c.annotator != bindparam("lbl_annotator"))
        .scalar_subquery()
    )
    complete = case((tasks.c.labels_wanted <= 1, true()), else_=others + 1 >= tasks.c.labels_wanted)
    closed = (
        update(tasks)
        .where(tasks.c.id == bindparam("lbl_task_id"), select(inserted.c.id).exists())
        .values(
            task_state.answered_in_sql(holder_id=bindparam("lbl_annotator_id"), complete=complete)
        )
        .values(updated_at=bindparam("lbl_created_at"))
        .returning(tasks.c.status)
        .cte("closed")
    )
    training = training_state_query().selected_columns if with_training else ()
    status = select(closed.c.status).scalar_subquery()
    return select(aliased(Label, inserted), status, *training).add_cte(closed)


def _task_to_label(
    session: Session, *, task_id: int, annotator: Annotator, idempotency_key: str | None
) -> tuple[AnnotationTask, Dataset, Label | None]:
    """The task (locked on PostgreSQL), its dataset and the annotator's label with that
    idempotency key, if any, in one query."""
    lock = session.get_bind().dialect.name == "postgresql"
    stmt = _task_to_label_query(with_key=bool(idempotency_key), lock=lock)
    params = {"to_label": task_id, "key_of": annotator.name, "key": idempotency_key}
    row = session.execute(stmt, params).first()
    if row is None:
        raise NotFound(f"no task {task_id}")
    return row[0], row[1], (row[2] if idempotency_key else None)


@functools.cache
def _task_to_label_query(*, with_key: bool, lock: bool) -> Executable:
    """Built once per variant (parameters ``to_label``, ``key_of`` and ``key``)."""
    stmt = (
        select(AnnotationTask, Dataset)
        .join(Dataset, Dataset.id == AnnotationTask.dataset_id)
        .where(AnnotationTask.id == bindparam("to_label"))
    )
    if with_key:
        stmt = stmt.add_columns(Label).outerjoin(
            Label,
            (Label.annotator == bindparam("key_of")) & (Label.idempotency_key == bindparam("key")),
        )
    return stmt.with_for_update(of=AnnotationTask) if lock else stmt


def _task_label(task: AnnotationTask, *, label: str, artifact_type: str | None) -> NewLabel:
    return NewLabel(
        x=task.x, y=task.y, z=task.z, w=task.w, h=task.h, label=label, artifact_type=artifact_type
    )


def skip_task(
    session: Session, *, task_id: int, annotator: Annotator, unsure: bool = False
) -> AnnotationTask:
    """Pass on a task: it goes back to the queue for the other annotators, never again to
    this one. ``unsure`` also puts the patch on the review list."""
    task = get_task(session, task_id, lock=True)
    if _leased_by_other(task, annotator):
        raise Conflict(f"task {task_id} is leased by another annotator")
    if task.status == TaskStatus.LABELLED:
        raise Conflict(f"task {task_id} is already labelled")
    if task.status == TaskStatus.RETIRED:
        raise Conflict(f"task {task_id} was retired: ask for the next task")
    skip = session.scalar(
        select(TaskSkip).where(TaskSkip.task_id == task.id, TaskSkip.annotator_id == annotator.id)
    )
    if skip is None:
        session.add(TaskSkip(task_id=task.id, annotator_id=annotator.id, unsure=unsure))
    else:
        skip.unsure = skip.unsure or unsure
    task_state.set_state(task, task_state.reopened())
    session.flush()
    return task


def undo_skip(
    session: Session, *, task_id: int, annotator: Annotator, lease_seconds: int
) -> AnnotationTask:
    """Take a skip back: the task is leased to the annotator again, if nobody took it."""
    task = get_task(session, task_id, lock=True)
    skip = session.scalar(
        select(TaskSkip).where(TaskSkip.task_id == task.id, TaskSkip.annotator_id == annotator.id)
    )
    if skip is None:
        raise Conflict(f"you did not skip task {task_id}")
    if task.status != TaskStatus.OPEN:
        raise Conflict(f"task {task_id} is {task.status} now: someone else took it")
    session.delete(skip)
    expires = utcnow() + timedelta(seconds=lease_seconds)
    task_state.set_state(task, task_state.leased(holder_id=annotator.id, expires=expires))
    session.flush()
    return task


def review_list(
    session: Session, *, dataset_id: int, limit: int, offset: int
) -> tuple[list[tuple[AnnotationTask, int]], int]:
    """Tasks flagged "unsure" by at least one annotator, with how many flagged them."""
    flagged = (
        select(TaskSkip.task_id, func.count(TaskSkip.id).label("flags"))
        .where(TaskSkip.unsure.is_(True))
        .group_by(TaskSkip.task_id)
        .subquery()
    )
    stmt = (
        select(AnnotationTask, flagged.c.flags)
        .join(flagged, flagged.c.task_id == AnnotationTask.id)
        .where(AnnotationTask.dataset_id == dataset_id)
    )
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = session.execute(
        stmt.order_by(
            AnnotationTask.resolved_at.is_not(None), AnnotationTask.rank, AnnotationTask.id
        )
        .limit(limit)
        .offset(offset)
    ).all()
    return [(task, int(flags)) for task, flags in rows], int(total)


def change_verdict(
    session: Session,
    *,
    label_id: int,
    annotator: Annotator,
    label: str,
    artifact_type: str | None,
) -> Label:
    """Replace one of the annotator's labels by a new verdict on the same patch. The new
    label gets a new id, so the next training snapshot counts it."""
    old = session.get(Label, label_id)
    if old is None:
        raise NotFound(f"no label {label_id}")
    if old.annotator_id != annotator.id:
        raise Conflict(f"label {label_id} is not yours to change")
    dataset = session.get(Dataset, old.dataset_id)
    assert dataset is not None
    task_id, source_ref, source = old.task_id, old.source_ref, old.source
    position = NewLabel(
        x=old.x, y=old.y, z=old.z, w=old.w, h=old.h, label=label, artifact_type=artifact_type
    )
    # the new one first: its id is then above every existing one on SQLite too (which
    # reuses the highest id once it is deleted), so a training snapshot counts the change
    created, _ = create_label(
        session,
        dataset=dataset,
        new=position,
        annotator=annotator,
        source=source if source in ("ui", "api") else "ui",
        source_ref=source_ref,
        task_id=task_id,
    )
    session.delete(old)
    session.flush()
    return created


def release_task(session: Session, *, task_id: int, annotator: Annotator) -> AnnotationTask:
    """Give a leased task back to the queue."""
    task = get_task(session, task_id, lock=True)
    if task.status != TaskStatus.LEASED or task.lease_holder_id != annotator.id:
        raise Conflict(f"task {task_id} is not leased by you")
    task_state.set_state(task, task_state.reopened())
    session.flush()
    return task


def undo_label(
    session: Session, *, label_id: int, annotator: Annotator, lease_seconds: int
) -> None:
    """Delete a label (the annotator's own; an admin's any). A labelled task left with labels
    from fewer annotators than it wants goes back under the annotator's lease, so it can be
    labelled again."""
    label = session.get(Label, label_id)
    if label is None:
        raise NotFound(f"no label {label_id}")
    if label.annotator_id != annotator.id and annotator.role != "admin":
        raise Forbidden("you can only undo your own labels")
    task_id = label.task_id
    session.delete(label)
    session.flush()
    if task_id is None:
        return
    task = session.get(AnnotationTask, task_id)
    if (
        task is not None
        and task.status == TaskStatus.LABELLED
        and annotators_of(session, task_id=task_id) < task.labels_wanted
    ):
        expires = utcnow() + timedelta(seconds=lease_seconds)
        task_state.set_state(task, task_state.leased(holder_id=annotator.id, expires=expires))
