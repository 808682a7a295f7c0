"""Dense predictions back into webKnossos: an artifact-probability layer, a mask, an NML.

A ``predict`` job plans the work and leaves it to chunk jobs that any gpu worker can take:

* the output is a webKnossos dataset ``<name>_artifact_pred`` (same voxel size and
  coordinates as the source) with a float32 ``artifact_prob`` color layer, shown as a red
  overlay, and a uint8 ``artifact_mask`` segmentation layer (1 = artifact), both at the
  coarse mag ``stride x dataset mag`` (one value per ``stride``-pixel cell);
* the cell ``c`` holds p(artifact) of the patch centred on the cell's centre, computed with
  the fully convolutional path (:meth:`models.networks.Classifier.dense`): one encoder pass
  per tile instead of one per overlapping patch;
* the region is cut along the layers' shards, so each chunk job writes whole shards that no
  other job touches: a killed job is simply run again and overwrites what it left;
* each chunk job also writes a small JSON (artifact clusters in its block, the map's score
  of every ground-truth patch centred in its block); when the last one is done the parent
  merges them into ``artifacts.nml`` (one bounding box per cluster) and a report, with the
  patch-level PR-AUC against ``ground_truth.csv`` when the dataset has one.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from server.errors import InvalidInput
from server.pixels.source import Vec3, parse_mag
from server.webknossos.lib import wk

PROB_LAYER = "artifact_prob"
MASK_LAYER = "artifact_mask"
DEFAULT_STRIDE = 32
STRIDES = (16, 32, 64)  # multiples of the encoder's total stride and powers of two (mags)
BLOCK_CELLS = 64  # shard width and height in cells; a chunk job writes one shard column
BLOCK_SECTIONS = 8
ENCODER_SCALE = 16

Report = Callable[[float, str], None]


@dataclass(frozen=True)
class Plan:
    """Where and how a prediction is computed; all JSON-serialisable for the job row."""

    out_path: str
    source_mag: tuple[int, int, int]
    out_mag: tuple[int, int, int]
    stride: int  # pixels at the source mag between neighbouring cells
    patch: int
    threshold: float
    region_offset: tuple[int, int, int]  # mag-1 voxels
    region_size: tuple[int, int, int]
    dataset_offset: tuple[int, int, int]  # mag-1 voxels, for clamping reads
    dataset_size: tuple[int, int, int]
    block_sections: int = BLOCK_SECTIONS  # sections per chunk job (and per shard)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in data.items()
                if k in cls.__dataclass_fields__
            }
        )

    @property
    def cell_px(self) -> tuple[int, int]:
        """A cell's width and height in mag-1 voxels."""
        return self.out_mag[0], self.out_mag[1]

    def cell_range(self) -> tuple[int, int, int, int, int, int]:
        """The region as cells: x0, y0, z0, x1, y1, z1 (half-open; z in sections)."""
        cw, ch = self.cell_px
        ox, oy, oz = self.region_offset
        sx, sy, sz = self.region_size
        return (
            ox // cw,
            oy // ch,
            oz,
            -(-(ox + sx) // cw),
            -(-(oy + sy) // ch),
            oz + sz,
        )


def validate_params(dataset: Any, params: dict[str, Any]) -> None:
    """Reject bad predict parameters before a job is queued (raises :class:`InvalidInput`)."""
    stride = params.get("stride", DEFAULT_STRIDE)
    if not isinstance(stride, int) or stride not in STRIDES:
        raise InvalidInput(f"stride must be one of {', '.join(map(str, STRIDES))} pixels")
    threshold = params.get("threshold")
    if threshold is not None and (
        not isinstance(threshold, int | float) or not 0.0 < float(threshold) < 1.0
    ):
        raise InvalidInput("threshold must be a number between 0 and 1")
    sections = params.get("sections_per_chunk", BLOCK_SECTIONS)
    if not isinstance(sections, int) or not 1 <= sections <= 64:
        raise InvalidInput("sections_per_chunk must be an integer from 1 to 64")
    bbox = params.get("bbox")
    if bbox is not None:
        _region(dataset, bbox)


def _region(dataset: Any, bbox: Any) -> tuple[Vec3, Vec3]:
    offset = (int(dataset.bbox_x), int(dataset.bbox_y), int(dataset.bbox_z))
    size = (int(dataset.bbox_w), int(dataset.bbox_h), int(dataset.bbox_d))
    if bbox is None:
        return offset, size
    if (
        not isinstance(bbox, list | tuple)
        or len(bbox) != 6
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in bbox)
    ):
        raise InvalidInput(
            "bbox must be six integers: x, y, z, width, height, depth (mag-1 voxels)"
        )
    x, y, z, w, h, d = bbox
    if w <= 0 or h <= 0 or d <= 0:
        raise InvalidInput("bbox width, height and depth must be positive")
    end = (x + w, y + h, z + d)
    if any(v < o for v, o in zip((x, y, z), offset, strict=True)) or any(
        e > o + s for e, o, s in zip(end, offset, size, strict=True)
    ):
        raise InvalidInput(
            f"bbox {list(bbox)} is not inside the dataset "
            f"(offset {list(offset)}, size {list(size)})"
        )
    return (x, y, z), (w, h, d)


def make_plan(dataset: Any, params: dict[str, Any], *, out_root: Path, threshold: float) -> Plan:
    validate_params(dataset, params)
    stride = int(params.get("stride", DEFAULT_STRIDE))
    mag = parse_mag(dataset.mag)
    offset, size = _region(dataset, params.get("bbox"))
    return Plan(
        out_path=str(out_root / f"{dataset.name}_artifact_pred"),
        source_mag=mag,
        out_mag=(stride * mag[0], stride * mag[1], mag[2]),
        stride=stride,
        patch=int(dataset.patch_size),
        threshold=float(params.get("threshold", threshold)),
        region_offset=offset,
        region_size=size,
        dataset_offset=(int(dataset.bbox_x), int(dataset.bbox_y), int(dataset.bbox_z)),
        dataset_size=(int(dataset.bbox_w), int(dataset.bbox_h), int(dataset.bbox_d)),
        block_sections=int(params.get("sections_per_chunk", BLOCK_SECTIONS)),
    )


def chunks(plan: Plan) -> list[tuple[int, int, int, int, int, int]]:
    """The region's cells cut along shard borders: (x0, y0, z0, x1, y1, z1) per chunk."""
    x0, y0, z0, x1, y1, z1 = plan.cell_range()
    out = []
    depth = plan.block_sections
    for bz in range(z0 // depth, -(-z1 // depth)):
        for by in range(y0 // BLOCK_CELLS, -(-y1 // BLOCK_CELLS)):
            for bx in range(x0 // BLOCK_CELLS, -(-x1 // BLOCK_CELLS)):
                out.append(
                    (
                        max(x0, bx * BLOCK_CELLS),
                        max(y0, by * BLOCK_CELLS),
                        max(z0, bz * depth),
                        min(x1, (bx + 1) * BLOCK_CELLS),
                        min(y1, (by + 1) * BLOCK_CELLS),
                        min(z1, (bz + 1) * depth),
                    )
                )
    return out


# -- output dataset ------------------------------------------------------------------------------
def create_output(plan: Plan, *, voxel_size: tuple[float, float, float]) -> None:
    """The prediction dataset with both layers (idempotent: reopened when it exists)."""
    path = Path(plan.out_path)
    if (path / "datasource-properties.json").is_file():
        ds = wk.Dataset.open(path)
    else:
        ds = wk.Dataset(path, voxel_size=voxel_size, exist_ok=True)
    bbox = wk.BoundingBox(plan.dataset_offset, plan.dataset_size)
    mag = wk.Mag(plan.out_mag)
    chunk = (32, 32, plan.block_sections)  # 2-D maps: a chunk spans the shard's sections
    shard = (BLOCK_CELLS, BLOCK_CELLS, plan.block_sections)
    if PROB_LAYER not in ds.layers:
        prob = ds.add_layer(
            PROB_LAYER, wk.COLOR_CATEGORY, dtype="float32", data_format="zarr3", bounding_box=bbox
        )
        prob.default_view_configuration = wk.LayerViewConfiguration(
            color=(255, 0, 0), alpha=50.0, intensity_range=(0.0, 1.0)
        )
        _add_mag(prob, mag, chunk, shard)
    if MASK_LAYER not in ds.layers:
        mask = ds.add_layer(
            MASK_LAYER,
            wk.SEGMENTATION_CATEGORY,
            dtype="uint8",
            data_format="zarr3",
            bounding_box=bbox,
            largest_segment_id=1,
        )
        mask.default_view_configuration = wk.LayerViewConfiguration(color=(255, 0, 0), alpha=40.0)
        _add_mag(mask, mag, chunk, shard)


def _add_mag(layer: Any, mag: Any, chunk: Vec3, shard: Vec3) -> None:
    with warnings.catch_warnings():  # the library's advice for 3-D image data, not maps
        warnings.simplefilter("ignore", UserWarning)
        layer.add_mag(mag, chunk_shape=chunk, shard_shape=shard)


@lru_cache(maxsize=4)
def _open_mag_views(out_path: str, mag: tuple[int, int, int]) -> tuple[Any, Any]:
    ds = wk.Dataset.open(out_path)
    return (
        ds.get_layer(PROB_LAYER).get_mag(wk.Mag(mag)),
        ds.get_layer(MASK_LAYER).get_mag(wk.Mag(mag)),
    )


# -- one chunk -----------------------------------------------------------------------------------
def predict_block(
    source: Any,
    classifier: Any,
    *,
    plan: Plan,
    block: tuple[int, int, int, int, int, int],
    norm: tuple[float, float],
    temperature: float,
) -> np.ndarray:
    """p(artifact) of the block's cells as ``(x, y, z)`` float32."""
    import torch

    x0, y0, z0, x1, y1, z1 = block
    mx, my, _ = plan.source_mag
    s, p = plan.stride, plan.patch
    nx, ny = x1 - x0, y1 - y0
    # the patch of cell c has its top-left at c*s + s/2 - p/2 (source-mag pixels)
    left, top = x0 * s + s // 2 - p // 2, y0 * s + s // 2 - p // 2
    width = _padded((nx - 1) * s + p)
    height = _padded((ny - 1) * s + p)
    lo = (plan.dataset_offset[0] // mx, plan.dataset_offset[1] // my)
    hi = (
        (plan.dataset_offset[0] + plan.dataset_size[0]) // mx,
        (plan.dataset_offset[1] + plan.dataset_size[1]) // my,
    )
    out = np.empty((nx, ny, z1 - z0), dtype=np.float32)
    mean, std = norm
    for z in range(z0, z1):
        tile = _read_clamped(source, left, top, width, height, z, lo=lo, hi=hi, mag=(mx, my))
        x = torch.from_numpy((tile.astype(np.float32) - mean) / std)[None, None]
        dense = classifier.dense(x, patch=p, stride=s, temperature=temperature)[0, 0]
        out[:, :, z - z0] = dense[:ny, :nx].numpy().T
    return out


def _padded(n: int) -> int:
    """Tile side rounded up to the encoder's stride, plus one step so every patch fits."""
    return -(-n // ENCODER_SCALE) * ENCODER_SCALE + ENCODER_SCALE


def _read_clamped(
    source: Any,
    left: int,
    top: int,
    width: int,
    height: int,
    z: int,
    *,
    lo: tuple[int, int],
    hi: tuple[int, int],
    mag: tuple[int, int],
) -> np.ndarray:
    """The tile at source-mag ``(left, top)``; outside the dataset it mirrors the data
    (zeros would look like a missing tile to the classifier)."""
    rx0, ry0 = max(left, lo[0]), max(top, lo[1])
    rx1, ry1 = min(left + width, hi[0]), min(top + height, hi[1])
    inner = source.read_region((rx0 * mag[0], ry0 * mag[1], z), (rx1 - rx0, ry1 - ry0))
    pad = ((ry0 - top, top + height - ry1), (rx0 - left, left + width - rx1))
    if any(v for pair in pad for v in pair):
        fits = all(max(pair) <= n for pair, n in zip(pad, inner.shape, strict=True))
        mode = "symmetric" if fits else "edge"
        inner = np.pad(inner, pad, mode=mode)
    return inner


def write_block(plan: Plan, block: tuple[int, int, int, int, int, int], prob: np.ndarray) -> None:
    prob_view, mask_view = _open_mag_views(plan.out_path, plan.out_mag)
    cw, ch = plan.cell_px
    offset = (block[0] * cw, block[1] * ch, block[2])
    prob_view.write(prob, absolute_offset=offset, allow_unaligned=True)
    mask_view.write(
        (prob >= plan.threshold).astype(np.uint8), absolute_offset=offset, allow_unaligned=True
    )


def block_summary(
    plan: Plan,
    block: tuple[int, int, int, int, int, int],
    prob: np.ndarray,
    truth: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, Any]:
    """Clusters of above-threshold cells (8-connected within a section: artifacts of mSEM
    are per section, and boxes one section deep are what a reviewer steps through) and
    ground-truth patch scores."""
    from scipy import ndimage

    cw, ch = plan.cell_px
    mask = prob >= plan.threshold
    in_section = np.zeros((3, 3, 3), dtype=bool)
    in_section[:, :, 1] = True
    labels, _ = ndimage.label(mask, structure=in_section)
    clusters = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        cells = labels[sl] == i
        clusters.append(
            {
                "box": [
                    (block[0] + sl[0].start) * cw,
                    (block[1] + sl[1].start) * ch,
                    block[2] + sl[2].start,
                    (sl[0].stop - sl[0].start) * cw,
                    (sl[1].stop - sl[1].start) * ch,
                    sl[2].stop - sl[2].start,
                ],
                "cells": int(cells.sum()),
                "max_p": float(prob[sl][cells].max()),
            }
        )
    scores: list[list[float]] = []
    if truth is not None:
        origins, labels_true = truth
        mx, my, _ = plan.source_mag
        centre = origins[:, :2] + np.asarray([plan.patch * mx // 2, plan.patch * my // 2])
        cx, cy, z = centre[:, 0] // cw, centre[:, 1] // ch, origins[:, 2]
        inside = (
            (cx >= block[0])
            & (cx < block[3])
            & (cy >= block[1])
            & (cy < block[4])
            & (z >= block[2])
            & (z < block[5])
        )
        for i in np.flatnonzero(inside):
            value = prob[cx[i] - block[0], cy[i] - block[1], z[i] - block[2]]
            scores.append([float(value), float(labels_true[i])])
    return {
        "block": list(block),
        "cells": int(prob.size),
        "artifact_cells": int(mask.sum()),
        "clusters": clusters,
        "truth_scores": scores,
    }


def ground_truth(dataset_path: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The dataset's ``ground_truth.csv`` (origins, labels), if it has one; read once per
    process (and again only when the file changes), not once per chunk."""
    path = Path(dataset_path) / "ground_truth.csv"
    if "://" in dataset_path or not path.is_file():
        return None
    return _ground_truth(str(path.parent), path.stat().st_mtime_ns)


@lru_cache(maxsize=2)
def _ground_truth(folder: str, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    from server.labels.truth import load_truth

    return load_truth(Path(folder))


def chunk_file(plan: Plan, index: int) -> Path:
    return Path(plan.out_path) / "chunks" / f"chunk-{index:06d}.json"


def save_summary(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(summary))
    tmp.replace(path)


# -- the end: merge clusters, NML, report ---------------------------------------------------------
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


def finish(plan: Plan, *, n_chunks: int, dataset_name: str, voxel_size: Any) -> dict[str, Any]:
    from models.metrics import average_precision

    boxes: list[list[int]] = []
    cells = artifact_cells = 0
    scores: list[list[float]] = []
    for i in range(n_chunks):
        summary = json.loads(chunk_file(plan, i).read_text())
        boxes += [c["box"] for c in summary["clusters"]]
        cells += summary["cells"]
        artifact_cells += summary["artifact_cells"]
        scores += summary["truth_scores"]
    cw, ch = plan.cell_px
    clusters = merge_boxes(boxes, gap=(cw, ch, 0)) if boxes else []
    clusters.sort(key=lambda b: (b[2], b[1], b[0]))
    nml = Path(plan.out_path) / "artifacts.nml"
    annotation = wk.Annotation(
        name=f"{dataset_name} artifacts", dataset_name=dataset_name, voxel_size=voxel_size
    )
    for i, (x, y, z, w, h, d) in enumerate(clusters):
        annotation.user_bounding_boxes.append(
            wk.BoundingBox((x, y, z), (w, h, d))
            .with_name(f"artifact {i + 1}")
            .with_color((1.0, 0.0, 0.0, 1.0))
            .with_is_visible(True)
        )
    annotation.save(nml)
    report: dict[str, Any] = {
        "output": plan.out_path,
        "layers": [PROB_LAYER, MASK_LAYER],
        "mag": "-".join(map(str, plan.out_mag)),
        "threshold": plan.threshold,
        "cells": cells,
        "artifact_cells": artifact_cells,
        "clusters": len(clusters),
        "nml": str(nml),
    }
    if scores:
        arr = np.asarray(scores)
        pr_auc = average_precision(arr[:, 1].astype(bool), arr[:, 0])
        report["ground_truth"] = {
            "patches": len(arr),
            "artifacts": int(arr[:, 1].sum()),
            "pr_auc": None if math.isnan(pr_auc) else round(pr_auc, 4),
        }
    (Path(plan.out_path) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
