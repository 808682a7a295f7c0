"""The end of a dense prediction: merge the chunk summaries into artifact boxes, a per-section
QC report and an NML, and publish the layers to the webKnossos server next to the EM.

:func:`finish_prediction` is the one entry point; it writes, beside the layers,

* ``artifacts.nml``: one user bounding box per artifact cluster, against the webKnossos
  dataset the layers were published as (its name and id), or the project's dataset name
  when nothing was published;
* ``sections.csv``: per z-section the cells, the cells above threshold, their fraction, the
  fields flagged and whether to re-image the section;
* ``fields.csv``: the same per field (beam tile) of every section, with its box and the
  reason a flagged one is flagged (:mod:`server.predictions.qc`);
* ``report.json``: everything the job's result holds, the QC included (``sections``,
  ``reimage_sections`` and ``reimage``: the re-image list of sections and fields).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from models.metrics import average_precision
from server.errors import InvalidInput
from server.predictions.dense import chunk_file
from server.predictions.plan import LAYERS, Plan
from server.predictions.qc import (
    FIELDS_CSV,
    field_qc,
    merge_fields,
    reimage_list,
    section_qc,
    write_fields_csv,
    write_sections_csv,
)
from server.settings import Settings
from server.webknossos.datasets import publish_dataset, server_dataset_id
from server.wklib import wk

REPORT = "report.json"
SECTIONS_CSV = "sections.csv"
NML = "artifacts.nml"


def merge_boxes(boxes: list[list[int]], *, gap: tuple[int, int, int]) -> list[list[int]]:
    """Union of boxes (x, y, z, w, h, d) that overlap or touch (within ``gap``)."""
    parent = list(range(len(boxes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    arr = np.asarray(boxes, dtype=np.int64).reshape(-1, 6)
    lo, hi = arr[:, :3], arr[:, :3] + arr[:, 3:]
    g = np.asarray(gap)
    for i in range(len(arr)):
        touching = np.all((lo <= hi[i] + g - 1) & (hi >= lo[i] - g + 1), axis=1)
        touching[: i + 1] = False
        for j in np.flatnonzero(touching):
            parent[find(int(j))] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(arr)):
        groups.setdefault(find(i), []).append(i)
    merged = []
    for members in groups.values():
        a, b = lo[members].min(0), hi[members].max(0)
        merged.append([*map(int, a), *map(int, b - a)])
    return merged


def write_nml(
    path: Path,
    clusters: list[list[int]],
    *,
    dataset_name: str,
    dataset_id: str | None,
    voxel_size: Any,
) -> None:
    annotation = wk.Annotation(
        name=f"{dataset_name} artifacts", dataset_name=dataset_name, voxel_size=voxel_size
    )
    if dataset_id is not None:
        annotation.dataset_id = dataset_id
    for i, (x, y, z, w, h, d) in enumerate(clusters):
        annotation.user_bounding_boxes.append(
            wk.BoundingBox((x, y, z), (w, h, d))
            .with_name(f"artifact {i + 1}")
            .with_color((1.0, 0.0, 0.0, 1.0))
            .with_is_visible(True)
        )
    annotation.save(path)


def _merge_chunks(plan: Plan, n_chunks: int) -> dict[str, Any]:
    boxes: list[list[int]] = []
    cells = artifact_cells = 0
    scores: list[list[float]] = []
    sections: dict[int, list[int]] = {}
    fields: dict[tuple[int, int, int], list[int]] = {}
    for i in range(n_chunks):
        summary = json.loads(chunk_file(plan, i).read_text())
        boxes += [c["box"] for c in summary["clusters"]]
        cells += summary["cells"]
        artifact_cells += summary["artifact_cells"]
        scores += summary["truth_scores"]
        for z, (n, above) in summary.get("sections", {}).items():
            total = sections.setdefault(int(z), [0, 0])
            total[0] += n
            total[1] += above
        merge_fields(fields, summary.get("fields", {}))
    cw, ch = plan.cell_px
    clusters = merge_boxes(boxes, gap=(cw, ch, 0)) if boxes else []
    clusters.sort(key=lambda b: (b[2], b[1], b[0]))
    return {
        "clusters": clusters,
        "cells": cells,
        "artifact_cells": artifact_cells,
        "scores": scores,
        "sections": sections,
        "fields": fields,
    }


def _publish(
    plan: Plan, *, dataset: Any, settings: Settings, previous: dict[str, Any]
) -> dict[str, Any] | None:
    """The prediction's layers on the webKnossos server beside the EM, when a server is
    configured and the dataset is one of its datasets; done once per prediction (a
    finished prediction run again keeps what it published)."""
    if not plan.publish or not settings.wk_url or settings.wk_token is None:
        return None
    em_id = server_dataset_id(dataset)
    if em_id is None:
        return None
    done = previous.get("webknossos")
    if isinstance(done, dict) and done.get("dataset_id"):
        return done
    published = publish_dataset(
        Path(plan.out_path),
        settings=settings,
        name=f"{dataset.name}_artifact_pred",
        layers=list(LAYERS),
        em_dataset_id=em_id,
        em_layer=str(getattr(dataset, "layer", None) or "color"),
    )
    return published.to_dict()


def finish_prediction(
    plan: Plan, *, n_chunks: int, dataset: Any, settings: Settings
) -> dict[str, Any]:
    """Merge the ``n_chunks`` chunk summaries of ``plan``, write the NML, the per-section QC
    (JSON and CSV) and the report, and publish the layers when a webKnossos server is
    configured and ``dataset`` (the dataset row: ``name``, ``voxel_size``, ``layer``,
    ``path``, ``settings``) is linked to one of its datasets or read from one. Returns the
    report (also ``report.json``)."""
    if dataset is None:
        raise InvalidInput("the prediction's dataset no longer exists")
    out = Path(plan.out_path)
    previous_path = out / REPORT
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else {}
    merged = _merge_chunks(plan, n_chunks)
    fields = field_qc(merged["fields"], plan=plan)
    sections = section_qc(merged["sections"], fields, rate=plan.reimage_rate)
    write_sections_csv(out / SECTIONS_CSV, sections)
    write_fields_csv(out / FIELDS_CSV, fields)
    voxel_size = tuple(dataset.voxel_size)
    published = _publish(plan, dataset=dataset, settings=settings, previous=previous)
    write_nml(
        out / NML,
        merged["clusters"],
        dataset_name=published["name"] if published else dataset.name,
        dataset_id=published["dataset_id"] if published else None,
        voxel_size=voxel_size,
    )
    report: dict[str, Any] = {
        "output": plan.out_path,
        "layers": list(LAYERS),
        "mag": "-".join(map(str, plan.out_mag)),
        "threshold": plan.threshold,
        "cells": merged["cells"],
        "artifact_cells": merged["artifact_cells"],
        "clusters": len(merged["clusters"]),
        "nml": str(out / NML),
        "reimage_rate": plan.reimage_rate,
        "reimage_sections": [s["z"] for s in sections if s["reimage"]],
        "field_rate": plan.field_rate,
        "field_grid": list(plan.field_size or plan.field_grid),
        "field_grid_from": "dataset tile_size" if plan.field_size else "grid",
        "reimage": reimage_list(sections, fields, rate=plan.reimage_rate),
        "sections_csv": str(out / SECTIONS_CSV),
        "fields_csv": str(out / FIELDS_CSV),
        "sections": sections,
        "webknossos": published,
    }
    scores = merged["scores"]
    if scores:
        arr = np.asarray(scores)
        pr_auc = average_precision(arr[:, 1].astype(bool), arr[:, 0])
        report["ground_truth"] = {
            "patches": len(arr),
            "artifacts": int(arr[:, 1].sum()),
            "pr_auc": None if math.isnan(pr_auc) else round(pr_auc, 4),
        }
    previous_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
