"""A label as the person gave it, checked against its dataset, and the row it becomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.vocab import ARTIFACT_TYPES
from server.db.tables import LABEL_SOURCES, LABEL_VALUES, Annotator, Dataset
from server.errors import InvalidInput


@dataclass(frozen=True)
class NewLabel:
    x: int
    y: int
    z: int
    w: int
    h: int
    label: str
    artifact_type: str | None = None


def check_artifact_type(*, label: str, artifact_type: str | None) -> None:
    if artifact_type is not None and label != "artifact":
        raise InvalidInput("only artifact labels carry an artifact type")


def validate_label(dataset: Dataset, new: NewLabel, *, source: str) -> None:
    if source not in LABEL_SOURCES:
        raise InvalidInput(f"unknown label source {source!r}")
    if new.label not in LABEL_VALUES:
        raise InvalidInput(f"label must be one of {', '.join(LABEL_VALUES)}, not {new.label!r}")
    check_artifact_type(label=new.label, artifact_type=new.artifact_type)
    if new.artifact_type is not None and new.artifact_type not in ARTIFACT_TYPES:
        raise InvalidInput(
            f"unknown artifact type {new.artifact_type!r}; use one of {', '.join(ARTIFACT_TYPES)}"
        )
    if new.w <= 0 or new.h <= 0:
        raise InvalidInput("patch width and height must be positive")
    x0, y0, z0 = dataset.bbox_x, dataset.bbox_y, dataset.bbox_z
    x1, y1, z1 = x0 + dataset.bbox_w, y0 + dataset.bbox_h, z0 + dataset.bbox_d
    if not (x0 <= new.x and new.x + new.w <= x1 and y0 <= new.y and new.y + new.h <= y1) or not (
        z0 <= new.z < z1
    ):
        raise InvalidInput(
            f"patch at ({new.x}, {new.y}, {new.z}) size {new.w} x {new.h} is outside the "
            f"dataset's bounding box {x0},{y0},{z0},{dataset.bbox_w},{dataset.bbox_h},"
            f"{dataset.bbox_d}"
        )


def label_row(
    dataset: Dataset,
    new: NewLabel,
    *,
    annotator: Annotator,
    source: str,
    source_ref: str | None,
    task_id: int | None,
    idempotency_key: str | None,
    from_prelabel: bool = False,
) -> dict[str, Any]:
    """The ``labels`` row for ``new`` (its column values), after :func:`validate_label`.
    ``from_prelabel``: the annotator accepted the model's pre-label."""
    validate_label(dataset, new, source=source)
    return {
        "dataset_id": dataset.id,
        "x": new.x,
        "y": new.y,
        "z": new.z,
        "w": new.w,
        "h": new.h,
        "label": new.label,
        "artifact_type": new.artifact_type,
        "annotator": annotator.name,
        "annotator_id": annotator.id,
        "source": source,
        "source_ref": source_ref,
        "task_id": task_id,
        "idempotency_key": idempotency_key or None,
        "from_prelabel": from_prelabel,
    }
