"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from models.vocab import ARTIFACT_TYPES
from server.acquisition import registry
from server.jobs.registry import STARTABLE_KINDS

T = TypeVar("T")


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# SQLite hands back naive datetimes (written in UTC): answer with the offset, as RFC 3339 needs
UtcDateTime = Annotated[datetime, AfterValidator(_utc)]

LabelValue = Literal["clean", "artifact"]
ArtifactType = Literal[
    "circular", "horseshoe", "scratch", "debris", "fold", "missing", "contrast", "defocus", "other"
]
assert set(ArtifactType.__args__) == set(ARTIFACT_TYPES)  # type: ignore[attr-defined]

Coord = Field(ge=-(2**40), le=2**40)
Extent = Field(gt=0, le=2**20)


class Orm(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class PageOf(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


# -- datasets ------------------------------------------------------------------------------------
class DatasetCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "demo", "path": "/data/demo", "layer": "color", "mag": "1"}]
        }
    )

    name: str = Field(min_length=1, max_length=200)
    path: str = Field(
        min_length=1,
        max_length=4000,
        description="Local webKnossos dataset folder, or the dataset's URL on the configured "
        "webKnossos server (read through its Zarr streaming).",
    )
    layer: str = Field(default="color", min_length=1, max_length=200)
    mag: str = Field(default="1", min_length=1, max_length=50, description="e.g. 1 or 8-8-1")
    patch: int = Field(default=140, ge=8, le=4096, description="Patch size in pixels at the mag.")
    stride: int | None = Field(default=None, ge=1, le=4096)
    bbox: str | None = Field(
        default=None, max_length=200, description="x,y,z,w,h,d in mag-1 voxels"
    )
    pretrain: bool = Field(default=True, description="Start autoencoder pretraining at once.")


class DatasetOut(Orm):
    id: int
    name: str
    path: str
    layer: str
    mag: str
    data_format: str
    voxel_size: list[Any]
    bbox: list[int]
    patch_size: int
    stride: int
    norm_mean: float
    norm_std: float
    patch_count: int
    created_at: UtcDateTime


class DatasetDetail(DatasetOut):
    labels: dict[str, Any]
    tasks: dict[str, int]
    active_models: dict[str, int | None]


# -- tasks -------------------------------------------------------------------------------------
class PreLabelOut(BaseModel):
    label: LabelValue = Field(description="The model's verdict: p_artifact at its threshold")
    p_artifact: float
    threshold: float


class TaskOut(Orm):
    id: int
    dataset_id: int
    kind: str
    grid_index: int | None
    x: int
    y: int
    z: int
    w: int
    h: int
    model_version_id: int | None
    p_artifact: float | None
    uncertainty: float | None
    recon_error: float | None
    score: float | None
    rank: int | None = Field(description="Queue order (not shown to annotators)")
    reason: str
    status: str
    lease_expires_at: UtcDateTime | None
    labels_wanted: int | None = Field(
        default=None,
        description="Distinct annotators whose labels finish the task (not shown to annotators)",
    )
    prelabel: PreLabelOut | None = Field(
        default=None,
        description="As handed to an annotator: the model's verdict on a scored proposal, which "
        "the labeling page can show and accept; never for an audit patch. The model's other "
        "figures (p_artifact, scores, version) are left out of what annotators get.",
    )
    image_url: str = ""
    webknossos_url: str | None = Field(
        default=None,
        description="The patch centre in webKnossos, when the dataset is on a webKnossos server "
        "or linked to one.",
    )


class ReviewEvent(BaseModel):
    annotator: str
    at: UtcDateTime


class ReviewLabel(ReviewEvent):
    label: str
    artifact_type: str | None = None


class ReviewTaskOut(TaskOut):
    unsure_flags: int = Field(description="Annotators who flagged the patch as unsure")
    flagged_by: list[ReviewEvent] = Field(default_factory=list, description="Who flagged, when")
    labels: list[ReviewLabel] = Field(default_factory=list, description="Its labels since")
    resolved_by: str | None = Field(default=None, description="The admin who resolved it")
    resolved_at: UtcDateTime | None = None


class OverlapSetting(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"overlap_share": 0.05}]})

    overlap_share: float = Field(
        ge=0,
        le=1,
        description="Share of new proposals that go to a second annotator (0 turns overlap off; "
        "every audit patch goes to two annotators regardless)",
    )


class ResolveTask(BaseModel):
    resolved: bool = Field(default=True, description="false takes the mark back")


class SkipTask(BaseModel):
    unsure: bool = Field(
        default=False, description="The annotator cannot decide: put the patch on the review list"
    )


class LabellingProgress(BaseModel):
    remaining: int = Field(description="Open tasks (counted up to 1000)")
    labels_total: int
    my_labels_last_hour: int
    labels_since_training: int = Field(description="Labels added since the last training began")
    retrain_every: int
    labels_until_training: int = Field(description="0: a training starts with the next label")
    training: dict[str, Any] | None = Field(
        description="The training job waiting or running (id, state, progress, message), if any"
    )
    next_step: str = Field(
        default="",
        description="What comes next, in words: the training running or due, the pool being "
        "scored, or how many labels until the next training",
    )


class NextTask(BaseModel):
    task: TaskOut | None
    remaining: int = Field(description="Tasks still waiting after this one (counted up to 1000).")
    message: str = ""


class LabelTask(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"label": "artifact", "artifact_type": "circular", "idempotency_key": "k-1"}
            ]
        }
    )

    label: LabelValue
    artifact_type: ArtifactType | None = None
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=200, description="Repeat-safe request key."
    )
    source: Literal["ui", "api"] = "api"
    from_prelabel: bool = Field(
        default=False,
        description="The verdict is the task's pre-label, accepted; refused (422) when it is "
        "not the pre-label or the task has none",
    )


class LabelChange(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"label": "artifact", "artifact_type": "fold"}]}
    )

    label: LabelValue
    artifact_type: ArtifactType | None = None


# -- labels ------------------------------------------------------------------------------------
class LabelCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"x": 1400, "y": 2800, "z": 3, "w": 140, "h": 140, "label": "clean"}]
        }
    )

    x: int = Coord
    y: int = Coord
    z: int = Coord
    w: int | None = Field(default=None, gt=0, le=2**20, description="Default: the grid patch")
    h: int | None = Field(default=None, gt=0, le=2**20)
    label: LabelValue
    artifact_type: ArtifactType | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class LabelOut(Orm):
    id: int
    dataset_id: int
    x: int
    y: int
    z: int
    w: int
    h: int
    label: str
    artifact_type: str | None
    annotator: str
    source: str
    source_ref: str | None
    task_id: int | None
    created_at: UtcDateTime
    from_prelabel: bool = False


class ImportReportOut(BaseModel):
    dataset: str
    filename: str
    format: str
    found: int = Field(description="Labels the file holds, placed on the dataset")
    added: int
    added_by_class: dict[str, int]
    added_by_type: dict[str, int]
    added_by_annotator: dict[str, int]
    skipped_existing: int = Field(description="Already imported before")
    duplicates_in_file: int
    conflicts: int = Field(description="Added labels whose patch had the other verdict already")
    warnings: list[str]
    training_job_id: int | None = None


# -- models and jobs ---------------------------------------------------------------------------
class ModelVersionOut(Orm):
    id: int
    dataset_id: int
    kind: str
    parent_id: int | None
    job_id: int | None
    status: str
    label_count: int
    label_snapshot_id: int | None
    weights_sha256: str | None
    active: bool
    pinned: bool
    created_at: UtcDateTime
    metrics: dict[str, Any]
    held_back: str | None = Field(
        default=None,
        description="Why this newer version was not made active automatically (worse on the "
        "audit set than the active one beyond its interval); an admin may still activate it.",
    )


class ModelVersionDetail(ModelVersionOut):
    config: dict[str, Any]


StartableKind = StrEnum(  # type: ignore[misc]
    "StartableKind", {kind.name: kind.value for kind in STARTABLE_KINDS}
)


class JobCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"kind": "train", "params": {}},
                {"kind": "predict", "params": {"stride": 32, "bbox": [0, 0, 0, 2048, 2048, 8]}},
                {"kind": "sync", "params": {"annotations": ["<annotation id or URL>"]}},
            ]
        }
    )

    kind: StartableKind
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="train: epochs, patience. predict: model_version_id, stride (16/32/64), "
        "threshold, bbox [x, y, z, w, h, d] in mag-1 voxels, sections_per_chunk. "
        "sync: annotations (webKnossos annotation ids or URLs to import besides the "
        "linked project's finished tasks). score, propose: model_version_id, strategy ("
        + ", ".join(registry.names())
        + "; default ARTIFACT_LOOP_ACQUISITION); propose: batch_size.",
    )


class JobOut(Orm):
    id: int
    dataset_id: int | None
    parent_id: int | None
    kind: str
    state: str
    progress: float
    message: str
    error: str | None
    params: dict[str, Any]
    result: dict[str, Any]
    attempts: int
    worker: str | None
    requested_by: str | None
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None


class StartedJobOut(BaseModel):
    job: JobOut
    coalesced: bool = Field(description="An identical job was already waiting; this is it.")


class Me(BaseModel):
    id: int
    name: str
    role: str


# -- errors ------------------------------------------------------------------------------------
class ErrorOut(BaseModel):
    """Every error answer: what went wrong, in one sentence."""

    detail: str


class ValidationProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str | None = None


class ValidationErrorOut(ErrorOut):
    errors: list[ValidationProblem] = Field(
        default_factory=list, description="One entry per invalid field, when fields were wrong"
    )
