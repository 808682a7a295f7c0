"""Typed parameters of each job kind. A job row keeps them as JSON; handlers read them
through these models, so a parameter has one name, one type and one default."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.acquisition.registry import StrategyName
from server.errors import InvalidInput


class JobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def of(cls, params: dict[str, Any] | None) -> Any:
        """Parse a job's stored or requested parameters; bad ones are :class:`InvalidInput`."""
        try:
            return cls.model_validate(params or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}"
                for e in exc.errors()
            )
            raise InvalidInput(f"invalid job parameters: {problems}") from None

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class PretrainParams(JobParams):
    patches: int | None = Field(None, ge=1, description="unlabelled patches to train on")
    epochs: int | None = Field(None, ge=1, le=1000)
    seed: int | None = None


class TrainParams(JobParams):
    epochs: int | None = Field(None, ge=1, le=1000)
    patience: int = Field(20, ge=1, le=1000)
    seed: int | None = None
    warm_start: bool | None = Field(
        None, description="start from the active classifier (default: the warm_start setting)"
    )
    trigger: str | None = Field(None, description="why the loop started it")


class ScoreParams(JobParams):
    model_version_id: int | None = Field(None, ge=1, description="default: the active version")
    chunk_patches: int = Field(2048, ge=16, le=1_000_000)
    chunks: int | None = Field(None, description="set when the job is planned")
    candidates: int | None = Field(None, description="set when the job is planned")
    strategy: StrategyName | None = Field(
        None, description="whose candidate set; default: ARTIFACT_LOOP_ACQUISITION"
    )


class ScoreChunkParams(JobParams):
    model_version_id: int
    chunk: int
    start: int
    stop: int


class ProposeParams(JobParams):
    model_version_id: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1, le=10_000)
    strategy: StrategyName | None = Field(None, description="default: ARTIFACT_LOOP_ACQUISITION")


class PredictParams(JobParams):
    model_version_id: int | None = Field(None, ge=1)
    stride: int = 32
    threshold: float | None = None
    bbox: list[int] | None = None
    sections_per_chunk: int = 8
    plan: dict[str, Any] | None = Field(None, description="set when the job is planned")


class PredictChunkParams(JobParams):
    model_version_id: int
    chunk: int
    block: list[int]


class SyncParams(JobParams):
    annotations: list[str] = Field(
        default_factory=list, description="webKnossos annotation ids or URLs to import"
    )


class AuditParams(JobParams):
    trigger: str | None = Field(None, description="why the loop started it")
