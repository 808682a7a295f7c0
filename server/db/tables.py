"""The schema: what people and models say about patches. Pixels stay in webKnossos.

Coordinates are mag-1 voxels. A patch is ``(x, y, z)`` top-left plus ``(w, h)`` extent in
mag-1 voxels; labels keep exactly the position they were given (not necessarily on the grid).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from server.db.base import Base, utcnow
from server.db.vocabulary import JobKind, JobState, TaskStatus, VersionStatus

LABEL_VALUES = ("clean", "artifact")
LABEL_SOURCES = ("ui", "api", "webknossos", "file", "simulation")
ROLES = ("annotator", "admin")
TASK_KINDS = ("proposal", "audit")
TASK_STATUSES = tuple(status.value for status in TaskStatus)
# A patch is in play (open or leased) in at most one batch of proposals: the predicate of the
# partial unique index ``uq_tasks_patch_in_play``. Releasing a lease keeps a task in play, so
# only a new batch can collide, and it skips those patches (``ON CONFLICT DO NOTHING``).
PROPOSAL_IN_PLAY = "kind = 'proposal' AND status IN ('open', 'leased')"
MODEL_KINDS = ("ae", "classifier")
MODEL_STATUSES = tuple(status.value for status in VersionStatus)
# the schema also admits "import", a kind no release has used
JOB_KINDS = (*(kind.value for kind in JobKind), "import")
JOB_STATES = tuple(state.value for state in JobState)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Dataset(Timestamped, Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    path: Mapped[str] = mapped_column(Text)
    layer: Mapped[str] = mapped_column(String(200), default="color")
    mag: Mapped[str] = mapped_column(String(50), default="1-1-1")
    data_format: Mapped[str] = mapped_column(String(20))
    voxel_size: Mapped[list[Any]] = mapped_column()
    bbox_x: Mapped[int] = mapped_column(BigInteger)
    bbox_y: Mapped[int] = mapped_column(BigInteger)
    bbox_z: Mapped[int] = mapped_column(BigInteger)
    bbox_w: Mapped[int] = mapped_column(BigInteger)
    bbox_h: Mapped[int] = mapped_column(BigInteger)
    bbox_d: Mapped[int] = mapped_column(BigInteger)
    patch_size: Mapped[int] = mapped_column(Integer, default=140)
    stride: Mapped[int] = mapped_column(Integer, default=140)
    norm_mean: Mapped[float] = mapped_column(Float)
    norm_std: Mapped[float] = mapped_column(Float)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (CheckConstraint("patch_size > 0 AND stride > 0", name="positive_grid"),)


class Annotator(Timestamped, Base):
    __tablename__ = "annotators"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20), default="annotator")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # how much their labels count in training and audit consensus (admin-set; 0 = excluded)
    label_weight: Mapped[float] = mapped_column(Float, default=1.0, server_default=text("1"))
    label_weight_reason: Mapped[str | None] = mapped_column(Text)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="annotator")

    __table_args__ = (
        CheckConstraint(_in("role", ROLES), name="role"),
        CheckConstraint("label_weight >= 0 AND label_weight <= 1", name="label_weight_range"),
    )


class ApiToken(Timestamped, Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    annotator_id: Mapped[int] = mapped_column(
        ForeignKey("annotators.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    annotator: Mapped[Annotator] = relationship(back_populates="tokens")


class Job(Timestamped, Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    requested_by: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(_in("kind", JOB_KINDS), name="kind"),
        CheckConstraint(_in("state", JOB_STATES), name="state"),
        Index("ix_jobs_dataset_kind_state", "dataset_id", "kind", "state"),
    )


class ModelVersion(Timestamped, Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(20))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(20), default=VersionStatus.TRAINING)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Labels the version was trained on: count and the highest label id at snapshot time.
    label_count: Mapped[int] = mapped_column(Integer, default=0)
    label_snapshot_id: Mapped[int | None] = mapped_column(BigInteger)
    weights_path: Mapped[str | None] = mapped_column(Text)
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        CheckConstraint(_in("kind", MODEL_KINDS), name="kind"),
        CheckConstraint(_in("status", MODEL_STATUSES), name="status"),
    )


class AnnotationTask(Timestamped, Base):
    __tablename__ = "annotation_tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20), default="proposal")
    grid_index: Mapped[int | None] = mapped_column(BigInteger)
    x: Mapped[int] = mapped_column(BigInteger)
    y: Mapped[int] = mapped_column(BigInteger)
    z: Mapped[int] = mapped_column(BigInteger)
    w: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    p_artifact: Mapped[float | None] = mapped_column(Float)
    uncertainty: Mapped[float | None] = mapped_column(Float)
    recon_error: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(String(40), default="")
    status: Mapped[str] = mapped_column(String(20), default=TaskStatus.OPEN)
    lease_holder_id: Mapped[int | None] = mapped_column(
        ForeignKey("annotators.id", ondelete="SET NULL")
    )
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    external_ref: Mapped[str | None] = mapped_column(String(200))
    # an admin's second look at a patch flagged unsure took it off the review list
    resolved_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("annotators.id", ondelete="SET NULL")
    )
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # distinct annotators whose labels finish the task: 2 for every audit patch and a share of
    # the proposals (see server.annotation.overlap), so agreement is measured as the loop runs
    labels_wanted: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))

    __table_args__ = (
        CheckConstraint(_in("kind", TASK_KINDS), name="kind"),
        CheckConstraint(_in("status", TASK_STATUSES), name="status"),
        # next task: equality on dataset and status, then rank order (see annotation_tasks.py)
        Index("ix_tasks_queue", "dataset_id", "status", "rank", "id"),
        Index("ix_tasks_position", "dataset_id", "z", "y", "x"),
        Index(
            "uq_tasks_patch_in_play",
            "dataset_id",
            "grid_index",
            unique=True,
            postgresql_where=text(PROPOSAL_IN_PLAY),
            sqlite_where=text(PROPOSAL_IN_PLAY),
        ),
    )


class Label(Base):
    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    x: Mapped[int] = mapped_column(BigInteger)
    y: Mapped[int] = mapped_column(BigInteger)
    z: Mapped[int] = mapped_column(BigInteger)
    w: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(20))
    artifact_type: Mapped[str | None] = mapped_column(String(40))
    annotator: Mapped[str] = mapped_column(String(200))
    annotator_id: Mapped[int | None] = mapped_column(
        ForeignKey("annotators.id", ondelete="SET NULL")
    )
    source: Mapped[str] = mapped_column(String(20))
    source_ref: Mapped[str | None] = mapped_column(String(300))
    task_id: Mapped[int | None] = mapped_column(
        ForeignKey("annotation_tasks.id", ondelete="SET NULL"), index=True
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # the annotator accepted the model's pre-label shown on the labeling page
    from_prelabel: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        CheckConstraint(_in("label", LABEL_VALUES), name="label"),
        CheckConstraint(_in("source", LABEL_SOURCES), name="source"),
        CheckConstraint("w > 0 AND h > 0", name="positive_size"),
        UniqueConstraint("annotator", "idempotency_key", name="uq_labels_idempotency"),
        Index("ix_labels_position", "dataset_id", "z", "y", "x"),
        Index("ix_labels_dataset_id_id", "dataset_id", "id"),
    )


WK_TASK_STATES = ("open", "finished", "cancelled")


class WkTask(Base):
    """A proposed patch pushed to a webKnossos server as a task."""

    __tablename__ = "wk_tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    task_id: Mapped[int | None] = mapped_column(
        ForeignKey("annotation_tasks.id", ondelete="SET NULL"), index=True
    )
    wk_task_id: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(20), default="open")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        CheckConstraint(_in("state", WK_TASK_STATES), name="state"),
        UniqueConstraint("dataset_id", "wk_task_id", name="uq_wk_tasks_task"),
        Index("ix_wk_tasks_open", "dataset_id", "state"),
    )


class WkAnnotation(Base):
    """A webKnossos annotation imported by a sync: imported again only when it changed."""

    __tablename__ = "wk_annotations"

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    annotation_id: Mapped[str] = mapped_column(String(100))
    wk_task_id: Mapped[str | None] = mapped_column(String(100))
    modified: Mapped[int] = mapped_column(BigInteger)  # the server's timestamp (ms)
    labels_added: Mapped[int] = mapped_column(Integer, default=0)
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("dataset_id", "annotation_id", name="uq_wk_annotations_annotation"),
    )


class TaskSkip(Base):
    """An annotator passed on a task: it goes back to the queue for the others. ``unsure``
    marks a patch the annotator could not decide, for the review list."""

    __tablename__ = "task_skips"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(
        ForeignKey("annotation_tasks.id", ondelete="CASCADE"), index=True
    )
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"))
    unsure: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("task_id", "annotator_id", name="uq_task_skips_once"),)


class LabelSuspect(Base):
    """A training label the model confidently contradicts out of fold (confident learning),
    found after a training: a candidate for a re-label task. Only the newest check of a
    dataset is kept (each training replaces the rows of the one before)."""

    __tablename__ = "label_suspects"

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    label_id: Mapped[int] = mapped_column(ForeignKey("labels.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    p_artifact: Mapped[float | None] = mapped_column(Float)  # the version's own view
    p_given: Mapped[float] = mapped_column(Float)  # out of fold: P(the label given)
    score: Mapped[float] = mapped_column(Float)  # P(wrong): the consensus with the model
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
