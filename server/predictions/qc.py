"""Quality control a lab acts on: per section and per field (beam tile), which to re-image and why.

An mSEM section is a montage of fields; a lab re-images a field, not a whole section. Each
section is cut into fields: the dataset's own tile grid when its settings give one
(``settings["tile_size"]``: a field's width and height in mag-1 voxels, fields starting at
the dataset's offset), else the region cut into a grid of ``field_grid`` columns x rows
(``ARTIFACT_LOOP_QC_FIELD_GRID``, default 4x4; a job's ``field_grid`` param overrides it).

A cell of the dense map belongs to the field holding its centre. Per field the chunk jobs
count its cells, those above threshold and those that are blank (no structure at all: the
beam tile came back empty). A field is re-imaged when at least ``field_rate`` of its cells
are above threshold; a section when at least ``reimage_rate`` of all its cells are, or when
any of its fields is. The re-image list names the whole section when more than half of its
fields are flagged (or its fraction crosses ``reimage_rate``), else the flagged fields.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_FIELD_GRID = (4, 4)
DEFAULT_FIELD_RATE = 0.5  # a field with at least this share of its cells above threshold
BLANK_STD = 1.0  # a cell whose own pixels vary less than this (grey levels) is blank
MISSING_SHARE = 0.5  # a flagged field at least this blank is a missing field
FIELDS_CSV = "fields.csv"


def parse_grid(text: str) -> tuple[int, int]:
    """``"4x4"`` -> ``(4, 4)`` (columns, rows); raises ValueError for anything else."""
    cols, sep, rows = text.lower().partition("x")
    if not sep or not cols.strip().isdigit() or not rows.strip().isdigit():
        raise ValueError(f"a field grid is <columns>x<rows>, e.g. 4x4, not {text!r}")
    grid = (int(cols), int(rows))
    if not all(1 <= n <= 64 for n in grid):
        raise ValueError(f"a field grid has 1 to 64 columns and rows, not {text!r}")
    return grid


@dataclass(frozen=True)
class Fields:
    """Where the fields of a section lie: origin and size in mag-1 voxels, and how many."""

    origin: tuple[int, int]
    size: tuple[float, float]
    count: tuple[int, int]

    @classmethod
    def of_plan(cls, plan: Any) -> Fields:
        if plan.field_size:
            ox, oy = plan.dataset_offset[0], plan.dataset_offset[1]
            w, h = plan.field_size
            end_x = plan.dataset_offset[0] + plan.dataset_size[0]
            end_y = plan.dataset_offset[1] + plan.dataset_size[1]
            return cls(
                (ox, oy), (float(w), float(h)), (-(-(end_x - ox) // w), -(-(end_y - oy) // h))
            )
        cols, rows = plan.field_grid
        sx, sy = plan.region_size[0], plan.region_size[1]
        return cls(
            (plan.region_offset[0], plan.region_offset[1]), (sx / cols, sy / rows), (cols, rows)
        )

    def index(self, centres: np.ndarray, axis: int) -> np.ndarray:
        """The field column (axis 0) or row (axis 1) of mag-1 coordinates."""
        f = np.floor((centres - self.origin[axis]) / self.size[axis]).astype(np.int64)
        return np.clip(f, 0, self.count[axis] - 1)

    def box(self, fx: int, fy: int, z: int) -> list[int]:
        """The field's box ``x, y, z, w, h, d`` in mag-1 voxels."""
        x0 = self.origin[0] + round(fx * self.size[0])
        y0 = self.origin[1] + round(fy * self.size[1])
        x1 = self.origin[0] + round((fx + 1) * self.size[0])
        y1 = self.origin[1] + round((fy + 1) * self.size[1])
        return [x0, y0, z, x1 - x0, y1 - y0, 1]


def blank_cells(tile: np.ndarray, *, nx: int, ny: int, stride: int, offset: int) -> np.ndarray:
    """Per cell ``(x, y)``: are its own ``stride`` x ``stride`` pixels blank? ``tile`` is the
    section's tile read for the block, its cell ``(0, 0)`` starting at ``offset`` pixels."""
    own = tile[offset : offset + ny * stride, offset : offset + nx * stride].astype(np.float32)
    std = own.reshape(ny, stride, nx, stride).std(axis=(1, 3))
    return (std < BLANK_STD).T


def block_fields(
    plan: Any,
    block: tuple[int, int, int, int, int, int],
    mask: np.ndarray,
    blank: np.ndarray | None,
) -> dict[str, list[list[int]]]:
    """Per section of the block: ``[fx, fy, cells, above threshold, blank]`` per field it
    touches."""
    fields = Fields.of_plan(plan)
    cw, ch = plan.cell_px
    fx = fields.index((np.arange(block[0], block[3]) + 0.5) * cw, 0)
    fy = fields.index((np.arange(block[1], block[4]) + 0.5) * ch, 1)
    key = (fx[:, None] * fields.count[1] + fy[None, :]).ravel()
    n_keys = fields.count[0] * fields.count[1]
    cells = np.bincount(key, minlength=n_keys)
    out: dict[str, list[list[int]]] = {}
    for k in range(mask.shape[2]):
        above = np.bincount(key, weights=mask[:, :, k].ravel(), minlength=n_keys)
        empty = (
            np.bincount(key, weights=blank[:, :, k].ravel(), minlength=n_keys)
            if blank is not None
            else np.zeros(n_keys)
        )
        out[str(block[2] + k)] = [
            [int(i // fields.count[1]), int(i % fields.count[1]), int(cells[i]),
             int(above[i]), int(empty[i])]
            for i in np.flatnonzero(cells)
        ]  # fmt: skip
    return out


def merge_fields(into: dict[tuple[int, int, int], list[int]], part: dict[str, Any]) -> None:
    """Add one chunk's per-field counts to ``into`` (``(z, fx, fy) -> [cells, above, blank]``)."""
    for z, rows in part.items():
        for fx, fy, cells, above, blank in rows:
            total = into.setdefault((int(z), fx, fy), [0, 0, 0])
            total[0] += cells
            total[1] += above
            total[2] += blank


def field_qc(counts: dict[tuple[int, int, int], list[int]], *, plan: Any) -> list[dict[str, Any]]:
    """Per field (by z, row, column): its box, cells, fractions above threshold and blank,
    re-image? and why."""
    fields = Fields.of_plan(plan)
    out = []
    for (z, fx, fy), (cells, above, blank) in sorted(
        counts.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])
    ):
        fraction = above / cells if cells else 0.0
        blank_fraction = blank / cells if cells else 0.0
        flagged = cells > 0 and fraction >= plan.field_rate
        found = "missing" if blank_fraction >= MISSING_SHARE else "artifact"
        out.append(
            {
                "z": z,
                "field": [fx, fy],
                "box": fields.box(fx, fy, z),
                "cells": cells,
                "artifact_cells": above,
                "fraction": round(fraction, 6),
                "blank_fraction": round(blank_fraction, 6),
                "reimage": flagged,
                "types": [found] if flagged else [],
                "reason": (
                    f"{fraction:.0%} of the field above threshold"
                    + (
                        f", {blank_fraction:.0%} blank (missing field)"
                        if found == "missing"
                        else ""
                    )
                    if flagged
                    else ""
                ),
            }
        )
    return out


def section_qc(
    sections: dict[int, list[int]], fields: list[dict[str, Any]], *, rate: float
) -> list[dict[str, Any]]:
    """Per z-section (ascending): cells, cells above threshold, their fraction, the fields
    flagged, re-image?"""
    flagged: dict[int, list[list[int]]] = {}
    for f in fields:
        if f["reimage"]:
            flagged.setdefault(f["z"], []).append(f["field"])
    out = []
    for z in sorted(sections):
        cells, above = sections[z]
        fraction = above / cells if cells else 0.0
        out.append(
            {
                "z": z,
                "cells": cells,
                "artifact_cells": above,
                "fraction": round(fraction, 6),
                "fields_flagged": flagged.get(z, []),
                "reimage": cells > 0 and (fraction >= rate or bool(flagged.get(z))),
            }
        )
    return out


def reimage_list(
    sections: list[dict[str, Any]], fields: list[dict[str, Any]], *, rate: float
) -> list[dict[str, Any]]:
    """What to image again, section by section: the whole section (most of it is bad) or the
    flagged fields, each with its box and the reason."""
    per_z: dict[int, list[dict[str, Any]]] = {}
    n_fields: dict[int, int] = {}
    for f in fields:
        n_fields[f["z"]] = n_fields.get(f["z"], 0) + 1
        if f["reimage"]:
            per_z.setdefault(f["z"], []).append(f)
    out: list[dict[str, Any]] = []
    for s in sections:
        if not s["reimage"]:
            continue
        bad = per_z.get(s["z"], [])
        types = sorted({t for f in bad for t in f["types"]}) or ["artifact"]
        if s["fraction"] >= rate or len(bad) * 2 > n_fields.get(s["z"], 1):
            out.append(
                {
                    "scope": "section",
                    "z": s["z"],
                    "fraction": s["fraction"],
                    "fields": [f["field"] for f in bad],
                    "types": types,
                    "reason": f"{s['fraction']:.0%} of the section above threshold, "
                    f"{len(bad)} of {n_fields.get(s['z'], 0)} fields flagged",
                }
            )
            continue
        for f in bad:
            out.append(
                {
                    "scope": "field",
                    "z": s["z"],
                    "field": f["field"],
                    "box": f["box"],
                    "fraction": f["fraction"],
                    "types": f["types"],
                    "reason": f["reason"],
                }
            )
    return out


def write_sections_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The QC table for an imaging team: one row per section."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["z", "cells", "cells_above_threshold", "fraction_above_threshold",
             "fields_flagged", "reimage"]
        )  # fmt: skip
        for row in rows:
            writer.writerow(
                [
                    row["z"],
                    row["cells"],
                    row["artifact_cells"],
                    f"{row['fraction']:.6f}",
                    " ".join(f"{fx},{fy}" for fx, fy in row["fields_flagged"]),
                    int(row["reimage"]),
                ]
            )


def write_fields_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per field of every section: where it is (mag-1 voxels), its fractions, whether
    to re-image it and why."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["z", "field_x", "field_y", "x", "y", "width", "height", "cells",
             "cells_above_threshold", "fraction_above_threshold", "blank_fraction",
             "reimage", "types", "reason"]
        )  # fmt: skip
        for r in rows:
            x, y, _, w, h, _ = r["box"]
            writer.writerow(
                [r["z"], *r["field"], x, y, w, h, r["cells"], r["artifact_cells"],
                 f"{r['fraction']:.6f}", f"{r['blank_fraction']:.6f}", int(r["reimage"]),
                 " ".join(r["types"]), r["reason"]]
            )  # fmt: skip
