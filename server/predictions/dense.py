"""Dense predictions back into webKnossos: an artifact-probability layer, a mask, an NML.

A ``predict`` job plans the work and leaves it to chunk jobs that any gpu worker can take:

* the output is a webKnossos dataset ``<name>_artifact_pred`` (same voxel size and
  coordinates as the source) with a float32 ``artifact_prob`` color layer, shown as a red
  overlay, a uint8 ``artifact_mask`` segmentation layer (1 = artifact) and a float32
  ``artifact_uncertainty`` color layer (1 - |2p - 1|, the acquisition's margin uncertainty:
  1 where the classifier cannot tell, the map of where labels help most), shown in blue, all
  at the coarse mag ``stride x dataset mag`` (one value per ``stride``-pixel cell);
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

from models.acquisition import margin_uncertainty
from server.labels.truth import load_truth
from server.pixels.source import Vec3
from server.predictions.plan import (
    BLOCK_CELLS,
    BLOCK_SECTIONS,
    DEFAULT_REIMAGE_RATE,
    DEFAULT_STRIDE,
    ENCODER_SCALE,
    LAYERS,
    MASK_LAYER,
    PROB_LAYER,
    STRIDES,
    UNCERTAINTY_LAYER,
    Plan,
    chunks,
    make_plan,
    validate_params,
)
from server.predictions.qc import blank_cells, block_fields
from server.wklib import wk

__all__ = [
    "BLOCK_CELLS",
    "BLOCK_SECTIONS",
    "DEFAULT_REIMAGE_RATE",
    "DEFAULT_STRIDE",
    "LAYERS",
    "MASK_LAYER",
    "PROB_LAYER",
    "STRIDES",
    "UNCERTAINTY_LAYER",
    "Plan",
    "block_summary",
    "chunk_file",
    "chunks",
    "create_output",
    "ground_truth",
    "make_plan",
    "predict_block",
    "predict_in_process",
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
    # p(artifact) in red; where the classifier is unsure in blue, off until switched on
    maps = (
        (PROB_LAYER, wk.LayerViewConfiguration(color=(255, 0, 0), alpha=50.0)),
        (UNCERTAINTY_LAYER, wk.LayerViewConfiguration(color=(0, 128, 255), alpha=40.0,
                                                      is_disabled=True)),
    )  # fmt: skip
    for name, view in maps:
        if name not in ds.layers:
            layer = ds.add_layer(
                name, wk.COLOR_CATEGORY, dtype="float32", data_format="zarr3", bounding_box=bbox
            )
            view.intensity_range = (0.0, 1.0)
            layer.default_view_configuration = view
            _add_mag(layer, mag, chunk, shard)
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
def _open_mag_views(out_path: str, mag: tuple[int, int, int]) -> tuple[Any, ...]:
    ds = wk.Dataset.open(out_path)
    return tuple(ds.get_layer(name).get_mag(wk.Mag(mag)) for name in LAYERS)


# -- one chunk -----------------------------------------------------------------------------------
def predict_block(
    source: Any,
    classifier: Any,
    *,
    plan: Plan,
    block: tuple[int, int, int, int, int, int],
    norm: tuple[float, float],
    temperature: float,
    blank: np.ndarray | None = None,
) -> np.ndarray:
    """p(artifact) of the block's cells as ``(x, y, z)`` float32; ``blank``, when given (bool,
    the same shape), receives which cells have no structure at all (for the QC's fields)."""
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
        if blank is not None:
            blank[:, :, z - z0] = blank_cells(tile, nx=nx, ny=ny, stride=s, offset=p // 2 - s // 2)
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
    prob_view, mask_view, unsure_view = _open_mag_views(plan.out_path, plan.out_mag)
    cw, ch = plan.cell_px
    offset = (block[0] * cw, block[1] * ch, block[2])
    prob_view.write(prob, absolute_offset=offset, allow_unaligned=True)
    mask_view.write(
        (prob >= plan.threshold).astype(np.uint8), absolute_offset=offset, allow_unaligned=True
    )
    unsure_view.write(
        margin_uncertainty(prob).astype(np.float32), absolute_offset=offset, allow_unaligned=True
    )


def block_summary(
    plan: Plan,
    block: tuple[int, int, int, int, int, int],
    prob: np.ndarray,
    truth: tuple[np.ndarray, np.ndarray] | None,
    blank: np.ndarray | None = None,
) -> dict[str, Any]:
    """Clusters of above-threshold cells (8-connected within a section: artifacts of mSEM
    are per section, and boxes one section deep are what a reviewer steps through), counts
    per section and per QC field (:mod:`server.predictions.qc`) and ground-truth patch
    scores."""
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
        # z -> [[fx, fy, cells, above threshold, blank], ...]: the per-field QC
        "fields": block_fields(plan, block, mask, blank),
        "clusters": clusters,
        "truth_scores": scores,
    }


def predict_in_process(
    plan: Plan, source: Any, classifier: Any, *, norm: tuple[float, float], temperature: float
) -> int:
    """Every chunk of ``plan`` in this process, one after the other (what the chunk jobs do
    on workers, for tests and benchmarks): layers written, summaries saved, blank cells
    counted. Returns the number of chunks, for :func:`finish_prediction`."""
    blocks = chunks(plan)
    for i, block in enumerate(blocks):
        x0, y0, z0, x1, y1, z1 = block
        blank = np.zeros((x1 - x0, y1 - y0, z1 - z0), dtype=bool)
        prob = predict_block(
            source, classifier, plan=plan, block=block, norm=norm, temperature=temperature,
            blank=blank,
        )  # fmt: skip
        write_block(plan, block, prob)
        save_summary(chunk_file(plan, i), block_summary(plan, block, prob, None, blank))
    return len(blocks)


def ground_truth(dataset_path: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The dataset's ``ground_truth.csv`` (origins, labels), if it has one; read once per
    process (and again only when the file changes), not once per chunk."""
    path = Path(dataset_path) / "ground_truth.csv"
    if "://" in dataset_path or not path.is_file():
        return None
    return _ground_truth(str(path.parent), path.stat().st_mtime_ns)


@lru_cache(maxsize=2)
def _ground_truth(folder: str, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    # a prediction only reports how it scores the known patches: a file of clean patches
    # alone is as welcome as any (the report's PR-AUC is then undefined)
    return load_truth(Path(folder), require_positive=False)


def chunk_file(plan: Plan, index: int) -> Path:
    return Path(plan.out_path) / "chunks" / f"chunk-{index:06d}.json"


def save_summary(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(summary))
    tmp.replace(path)
