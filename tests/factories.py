"""Row factories for tests of the loop's decisions: the smallest valid rows, overridable."""

from __future__ import annotations

from itertools import count
from typing import Any

from sqlalchemy.orm import Session

from server.db.tables import AnnotationTask, Annotator, Dataset, Label, ModelVersion

_n = count(1)


def dataset(session: Session, **values: Any) -> Dataset:
    """A 4 x 4 x 2 grid of 140 px patches (path need not exist: no pixels are read)."""
    row = Dataset(
        **{
            "name": f"ds-{next(_n)}", "path": "/nowhere", "layer": "color", "mag": "1-1-1",
            "data_format": "zarr3", "voxel_size": [32, 32, 35], "bbox_x": 0, "bbox_y": 0,
            "bbox_z": 0, "bbox_w": 560, "bbox_h": 560, "bbox_d": 2, "norm_mean": 148.0,
            "norm_std": 36.0, **values,
        }
    )  # fmt: skip
    session.add(row)
    session.flush()
    return row


def annotator(session: Session, **values: Any) -> Annotator:
    row = Annotator(**{"name": f"annotator-{next(_n)}", "role": "annotator", **values})
    session.add(row)
    session.flush()
    return row


def version(session: Session, ds: Dataset, **values: Any) -> ModelVersion:
    row = ModelVersion(
        **{
            "dataset_id": ds.id, "kind": "ae", "status": "ready", "config": {},
            "weights_path": "/nowhere/weights.pt", **values,
        }
    )  # fmt: skip
    session.add(row)
    session.flush()
    return row


def label(
    session: Session, ds: Dataset, *, x: int = 0, y: int = 0, z: int = 0, **values: Any
) -> Label:
    row = Label(
        **{
            "dataset_id": ds.id, "x": x, "y": y, "z": z, "w": 140, "h": 140, "label": "clean",
            "annotator": "someone", "source": "api", **values,
        }
    )  # fmt: skip
    session.add(row)
    session.flush()
    return row


def task(session: Session, ds: Dataset, *, grid_index: int, **values: Any) -> AnnotationTask:
    x, y, z = (grid_index % 4) * 140, (grid_index // 4 % 4) * 140, grid_index // 16
    row = AnnotationTask(
        **{
            "dataset_id": ds.id, "kind": "proposal", "grid_index": grid_index, "x": x, "y": y,
            "z": z, "w": 140, "h": 140, "rank": grid_index, "reason": "test", "status": "open",
            **values,
        }
    )  # fmt: skip
    session.add(row)
    session.flush()
    return row
