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
* each chunk job also writes a small JSON (artifact clusters in its block, its cells above
  threshold per section, the map's score of every ground-truth patch centred in its block);
  when the last one is done the parent merges them (:mod:`server.predictions.finish`).

The plan lives in :mod:`server.predictions.plan` (re-exported here).
"""

from __future__ import annotations

import json
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from server.labels.truth import load_truth
from server.pixels.source import Vec3
from server.predictions.plan import (
    BLOCK_CELLS,
    BLOCK_SECTIONS,
    DEFAULT_REIMAGE_RATE,
    DEFAULT_STRIDE,
    ENCODER_SCALE,
    MASK_LAYER,
    PROB_LAYER,
    STRIDES,
    Plan,
    chunks,
    make_plan,
    validate_params,
)
from server.wklib import wk

__all__ = [
    "BLOCK_CELLS",
    "BLOCK_SECTIONS",
    "DEFAULT_REIMAGE_RATE",
    "DEFAULT_STRIDE",
    "MASK_LAYER",
    "PROB_LAYER",
    "STRIDES",
    "Plan",
    "block_summary",
    "chunk_file",
    "chunks",
    "create_output",
    "ground_truth",
    "make_plan",
    "predict_block",
    "save_summary",
    "validate_params",
    "write_block",
]


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
    # torch only in the chunk jobs that run the model
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
    # scipy costs a second at start-up; only clustering needs it
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
    per_section = mask.reshape(-1, mask.shape[2]).sum(axis=0)
    return {
        "block": list(block),
        "cells": int(prob.size),
        "artifact_cells": int(mask.sum()),
        # z -> [cells, cells above threshold]: the per-section QC
        "sections": {
            str(block[2] + k): [int(prob.shape[0] * prob.shape[1]), int(n)]
            for k, n in enumerate(per_section)
        },
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
    return load_truth(Path(folder))


def chunk_file(plan: Plan, index: int) -> Path:
    return Path(plan.out_path) / "chunks" / f"chunk-{index:06d}.json"


def save_summary(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(summary))
    tmp.replace(path)
