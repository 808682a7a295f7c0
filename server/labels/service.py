"""Labels: people's verdicts on patches at exact positions. Several per patch are kept."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BindParameter, Select, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from server.db.base import write_transaction
from server.db.tables import Annotator, Dataset, Job, Label, ModelVersion
from server.db.vocabulary import VersionStatus
from server.errors import Conflict
from server.jobs import state
from server.jobs.kinds import JobKind, JobState
from server.jobs.queue import JobSender, SendLater
from server.labels.rows import NewLabel, label_row
from server.runtime import Runtime
from server.versions.service import active_model


def create_label(
    session: Session,
    *,
    dataset: Dataset,
    new: NewLabel,
    annotator: Annotator,
    source: str,
    source_ref: str | None = None,
    task_id: int | None = None,
    idempotency_key: str | None = None,
    key_checked: bool = False,
    from_prelabel: bool = False,
) -> tuple[Label, bool]:
    """Add a label; with an ``idempotency_key`` a repeated request returns the first label.
    Returns the label and whether it was created now."""
    values = label_row(
        dataset,
        new,
        annotator=annotator,
        source=source,
        source_ref=source_ref,
        task_id=task_id,
        idempotency_key=idempotency_key,
        from_prelabel=from_prelabel,
    )
    if not idempotency_key:
        label = Label(**values)
        session.add(label)
        session.flush()
        return label, True
    # Two identical requests racing: the unique key lets exactly one insert win, in one
    # statement (a savepoint around the insert would cost two more round trips per label).
    on_key = ["annotator", "idempotency_key"]
    stmt = (
        postgresql_insert(Label).values(**values).on_conflict_do_nothing(index_elements=on_key)
        if session.get_bind().dialect.name == "postgresql"
        else sqlite_insert(Label).values(**values).on_conflict_do_nothing(index_elements=on_key)
    ).returning(Label)
    inserted = session.scalars(stmt).first()
    if inserted is not None:
        return inserted, True
    existing = find_by_key(
        session,
        annotator=annotator.name,
        key=idempotency_key,
        expect=new,
        dataset_id=dataset.id,
        task_id=task_id,
    )
    if existing is None:  # pragma: no cover - the conflicting row cannot vanish in between
        raise Conflict(f"idempotency key {idempotency_key!r} is in use; retry")
    return existing, False


def find_by_key(
    session: Session,
    *,
    annotator: str,
    key: str,
    expect: NewLabel | None = None,
    dataset_id: int | None = None,
    task_id: int | None = None,
) -> Label | None:
    """The label ``annotator`` gave with idempotency ``key``, if any.

    With ``expect``, the key must have been used for the same request: the same task (or,
    for a label without a task, the same dataset and position) and the same verdict.
    Anything else is a reuse of the key and raises :class:`Conflict`.
    """
    found = session.scalar(
        select(Label).where(Label.annotator == annotator, Label.idempotency_key == key)
    )
    if found is None or expect is None:
        return found
    return check_key_reuse(found, key=key, expect=expect, dataset_id=dataset_id, task_id=task_id)


def check_key_reuse(
    found: Label, *, key: str, expect: NewLabel, dataset_id: int | None, task_id: int | None
) -> Label:
    """``found``, the label given with idempotency ``key``, if the key was used for the same
    request; else :class:`Conflict`."""
    if found.task_id != task_id or (
        task_id is None
        and (found.dataset_id, found.x, found.y, found.z, found.w, found.h)
        != (dataset_id, expect.x, expect.y, expect.z, expect.w, expect.h)
    ):
        where = f"task {found.task_id}" if found.task_id is not None else "another patch"
        raise Conflict(f"idempotency key {key!r} was already used for {where}")
    if (found.label, found.artifact_type) != (expect.label, expect.artifact_type):
        raise Conflict(
            f"idempotency key {key!r} was already used with the verdict {found.label!r}"
            + (f" ({found.artifact_type})" if found.artifact_type else "")
        )
    return found


@dataclass(frozen=True)
class LabelFilter:
    label: str | None = None
    artifact_type: str | None = None
    annotator: str | None = None
    source: str | None = None
    z: int | None = None
    task_id: int | None = None


def label_query(dataset_id: int, filters: LabelFilter) -> Select[tuple[Label]]:
    stmt = select(Label).where(Label.dataset_id == dataset_id)
    if filters.label is not None:
        stmt = stmt.where(Label.label == filters.label)
    if filters.artifact_type is not None:
        stmt = stmt.where(Label.artifact_type == filters.artifact_type)
    if filters.annotator is not None:
        stmt = stmt.where(Label.annotator == filters.annotator)
    if filters.source is not None:
        stmt = stmt.where(Label.source == filters.source)
    if filters.z is not None:
        stmt = stmt.where(Label.z == filters.z)
    if filters.task_id is not None:
        stmt = stmt.where(Label.task_id == filters.task_id)
    return stmt


def list_labels(
    session: Session, *, dataset_id: int, filters: LabelFilter, limit: int, offset: int
) -> tuple[list[Label], int]:
    stmt = label_query(dataset_id, filters)
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = session.scalars(stmt.order_by(Label.id).limit(limit).offset(offset))
    return list(rows), int(total)


def label_counts(session: Session, *, dataset_id: int) -> dict[str, Any]:
    """Labels per class and per annotator (for the dashboard)."""
    by_class = dict(
        session.execute(
            select(Label.label, func.count(Label.id))
            .where(Label.dataset_id == dataset_id)
            .group_by(Label.label)
        ).all()
    )
    per_annotator: dict[str, dict[str, int]] = {}
    for name, value, count in session.execute(
        select(Label.annotator, Label.label, func.count(Label.id))
        .where(Label.dataset_id == dataset_id)
        .group_by(Label.annotator, Label.label)
    ).all():
        per_annotator.setdefault(name, {"clean": 0, "artifact": 0})[value] = int(count)
    return {
        "total": int(sum(by_class.values())),
        "clean": int(by_class.get("clean", 0)),
        "artifact": int(by_class.get("artifact", 0)),
        "per_annotator": per_annotator,
    }


def disagreements(
    session: Session, *, dataset_id: int, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """Patches (same position) where annotators gave different verdicts."""
    position = (Label.x, Label.y, Label.z, Label.w, Label.h)
    conflicted = (
        select(*position)
        .where(Label.dataset_id == dataset_id)
        .group_by(*position)
        .having(func.count(func.distinct(Label.label)) > 1)
    )
    total = session.scalar(select(func.count()).select_from(conflicted.subquery())) or 0
    page = session.execute(
        conflicted.order_by(Label.z, Label.y, Label.x).limit(limit).offset(offset)
    ).all()
    out: list[dict[str, Any]] = []
    for x, y, z, w, h in page:
        verdicts = session.scalars(
            select(Label)
            .where(
                Label.dataset_id == dataset_id,
                Label.x == x,
                Label.y == y,
                Label.z == z,
                Label.w == w,
                Label.h == h,
            )
            .order_by(Label.id)
        )
        out.append(
            {
                "x": x,
                "y": y,
                "z": z,
                "w": w,
                "h": h,
                "labels": [
                    {
                        "id": v.id,
                        "annotator": v.annotator,
                        "label": v.label,
                        "artifact_type": v.artifact_type,
                        "source": v.source,
                    }
                    for v in verdicts
                ],
            }
        )
    return out, int(total)


# -- labels arrived: the one place that decides a new training ---------------------------------
def labels_arrived(
    rt: Runtime, sender: JobSender, *, dataset_id: int, may_start: bool | None = None
) -> Job | None:
    """Call after committing labels of ``dataset_id``, however they came (page, REST, file
    import, webKnossos): starts a training once ``retrain_every`` labels arrived since the
    last one, coalesced with a training that is waiting. Returns that training, if any.
    ``may_start``: what :func:`training_may_start` answered in the labelling transaction.
    The labels are stored whatever the broker does: a training it cannot take now waits in
    the database and is sent again later (:class:`~server.jobs.queue.SendLater`)."""
    if may_start is None:
        may_start = _training_may_start(rt, dataset_id=dataset_id)
    if not may_start:
        return None
    with write_transaction(rt.sessions) as session:
        if active_model(session, dataset_id=dataset_id, kind="ae") is None:
            return None  # nothing to fine-tune from yet
        active = state.active_jobs(session, dataset_id=dataset_id, kinds=(JobKind.TRAIN,))
        queued = [j for j in active if j.state == JobState.QUEUED]
        if queued:
            return queued[0]  # coalesce
        if active:
            return None  # the running training's follow-up counts what arrived meanwhile
        new = session.scalar(
            select(func.count(Label.id)).where(
                Label.dataset_id == dataset_id,
                Label.id > last_training_snapshot(session, dataset_id=dataset_id),
            )
        )
        if (new or 0) < rt.settings.retrain_every:
            return None
        return state.start_job(
            session,
            sender=SendLater(sender),
            kind=JobKind.TRAIN,
            dataset_id=dataset_id,
            params={"trigger": f"{new} new labels"},
            requested_by="loop",
        ).job


def audit_labels_arrived(rt: Runtime, sender: JobSender, *, dataset_id: int) -> Job | None:
    """Call after committing a new label of an audit patch: every ready classifier is
    measured again on the audit set as it now is (one waiting measurement takes in all that
    arrive meanwhile). Returns that job, if any."""
    from server.jobs import state
    from server.jobs.kinds import JobKind

    with write_transaction(rt.sessions) as session:
        ready = session.scalar(
            select(ModelVersion.id)
            .where(
                ModelVersion.dataset_id == dataset_id,
                ModelVersion.kind == "classifier",
                ModelVersion.status == "ready",
            )
            .limit(1)
        )
        if ready is None:
            return None
        return state.start_job(
            session,
            sender=sender,
            kind=JobKind.AUDIT,
            dataset_id=dataset_id,
            params={"trigger": "audit labels arrived"},
            requested_by="loop",
        ).job


def training_may_start(session: Session, *, dataset_id: int) -> bool:
    """Whether a training may start: not without a ready autoencoder, nor while one runs and
    none waits. A labelling request asks in its own transaction, before it commits."""
    return training_state_allows(
        *session.execute(training_state_query(), {"arrived_in": dataset_id}).one()
    )


def training_state_allows(has_autoencoder: bool, running: bool, queued: bool) -> bool:
    """:func:`training_may_start`'s rule on the row of :func:`training_state_query`."""
    return bool(has_autoencoder) and (bool(queued) or not running)


def _training_may_start(rt: Runtime, *, dataset_id: int) -> bool:
    """:func:`training_may_start` in one autocommit query (no BEGIN, no ROLLBACK): what
    decides most calls of :func:`labels_arrived`."""
    with rt.sessions() as session:
        bind = session.get_bind()
        if isinstance(bind, Engine) and bind.dialect.name == "postgresql":
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        return training_may_start(session, dataset_id=dataset_id)


@functools.cache
def training_state_query() -> Select[Any]:
    """Whether the dataset (parameter ``arrived_in``) has a ready autoencoder, a running
    and a queued training. Built once: building it cost more than running it. Its columns
    also ride along in the statement that labels a task on PostgreSQL."""
    dataset_id: BindParameter[int] = bindparam("arrived_in")

    def train_in(state: str) -> Any:
        return (
            select(Job.id)
            .where(Job.dataset_id == dataset_id, Job.kind == JobKind.TRAIN, Job.state == state)
            .exists()
        )

    autoencoder = (
        select(ModelVersion.id)
        .where(
            ModelVersion.dataset_id == dataset_id,
            ModelVersion.kind == "ae",
            ModelVersion.status == VersionStatus.READY,
        )
        .exists()
    )
    return select(autoencoder, train_in(JobState.RUNNING), train_in(JobState.QUEUED))


def last_training_snapshot(session: Session, *, dataset_id: int) -> int:
    """The newest label the last training saw (a version's snapshot, or that of a training
    skipped for lack of both classes)."""
    versions = session.scalar(
        select(func.max(ModelVersion.label_snapshot_id)).where(
            ModelVersion.dataset_id == dataset_id,
            ModelVersion.kind == "classifier",
            ModelVersion.status.in_((VersionStatus.READY, VersionStatus.TRAINING)),
        )
    )
    skipped = session.scalar(
        select(Job)
        .where(
            Job.dataset_id == dataset_id,
            Job.kind == JobKind.TRAIN,
            Job.state == JobState.SUCCEEDED,
        )
        .order_by(Job.id.desc())
        .limit(1)
    )
    from_skip = int((skipped.result or {}).get("snapshot_id", 0)) if skipped is not None else 0
    return max(versions or 0, from_skip)
