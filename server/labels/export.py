"""Exporting a dataset's labels as CSV or JSON, for people to check and other tools to read."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from typing import Any, Final, TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.base import as_utc
from server.db.tables import Dataset, Label

EXPORT_COLUMNS: Final = (
    "x",
    "y",
    "z",
    "label",
    "type",
    "annotator",
    "source",
    "created_at",
    "w",
    "h",
)


def _label_rows(session: Session, *, dataset: Dataset) -> Iterable[dict[str, Any]]:
    stmt = (
        select(
            Label.x,
            Label.y,
            Label.z,
            Label.label,
            Label.artifact_type,
            Label.annotator,
            Label.source,
            Label.created_at,
            Label.w,
            Label.h,
            Label.source_ref,
        )
        .where(Label.dataset_id == dataset.id)
        .order_by(Label.id)
        .execution_options(yield_per=2000)
    )
    for x, y, z, label, kind, annotator, source, created, w, h, ref in session.execute(stmt):
        yield {
            "x": x,
            "y": y,
            "z": z,
            "label": label,
            "type": kind,  # None: csv writes an empty field, JSON null
            "annotator": annotator,
            "source": source,
            "created_at": as_utc(created).isoformat(),
            "w": w,
            "h": h,
            "source_ref": ref,
        }


def export_labels_csv(session: Session, *, dataset: Dataset, out: TextIO) -> int:
    """Write every label of ``dataset`` as CSV (:data:`EXPORT_COLUMNS`); returns the count."""
    writer = csv.DictWriter(out, fieldnames=list(EXPORT_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    count = 0
    for row in _label_rows(session, dataset=dataset):
        writer.writerow(row)
        count += 1
    return count


def export_labels_json(session: Session, *, dataset: Dataset, out: TextIO) -> int:
    """Write every label of ``dataset`` as one JSON object; returns the count."""
    header: Mapping[str, Any] = {
        "dataset": dataset.name,
        "voxel_size": list(dataset.voxel_size or []),
        "patch_size": dataset.patch_size,
        "mag": dataset.mag,
    }
    out.write("{\n")
    for key, value in header.items():
        out.write(f"  {json.dumps(key)}: {json.dumps(value)},\n")
    out.write('  "labels": [')
    count = 0
    for row in _label_rows(session, dataset=dataset):
        out.write(("," if count else "") + "\n    " + json.dumps(row))
        count += 1
    out.write("\n  ]\n}\n")
    return count
