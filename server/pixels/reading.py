"""Reading normalised patches for the models: by grid index, by label box, in batches."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from server.db.tables import Dataset
from server.pixels.grid import Grid
from server.pixels.source import PatchSource, patch_extent
from server.settings import Settings

Report = Callable[[float, str], None]
READ_BATCH = 256


def use_all_cores(settings: Settings) -> None:
    """Torch on the CPU: one thread per core (a worker runs one model job at a time)."""
    # torch only where a model reads patches (the API reads pixels too)
    import torch

    if settings.device in ("auto", "cpu") and not torch.cuda.is_available():
        torch.set_num_threads(settings.torch_threads or max(1, os.cpu_count() or 1))


def read_at(
    source: PatchSource, dataset: Dataset, origins: np.ndarray, *, report: Report | None = None
) -> np.ndarray:
    """Normalised patches ``(n, 1, p, p)`` at ``origins`` (mag-1 top-left corners)."""
    parts = []
    for start in range(0, len(origins), READ_BATCH):
        parts.append(
            source.read_normalised(
                origins[start : start + READ_BATCH],
                mean=dataset.norm_mean,
                std=dataset.norm_std,
                size_px=dataset.patch_size,
            )
        )
        if report is not None:
            report(min(1.0, (start + READ_BATCH) / len(origins)), "reading patches")
    if not parts:
        p = dataset.patch_size
        return np.empty((0, 1, p, p), dtype=np.float32)
    return np.concatenate(parts)


def batches_of(
    source: PatchSource, dataset: Dataset, grid: Grid, indices: np.ndarray
) -> Iterator[np.ndarray]:
    """Patches of grid ``indices``, ``READ_BATCH`` at a time."""
    for s in range(0, len(indices), READ_BATCH):
        yield read_at(source, dataset, grid.origins(indices[s : s + READ_BATCH]))


def label_origins(dataset: Dataset, labels: list[Any]) -> np.ndarray:
    """Top-left of the dataset-sized patch centred on each label box, kept inside the bbox
    (labels from files need not lie on the grid)."""
    w, h = patch_extent(dataset)
    out = np.empty((len(labels), 3), dtype=np.int64)
    for i, lab in enumerate(labels):
        cx, cy = lab.x + lab.w // 2, lab.y + lab.h // 2
        x = min(max(cx - w // 2, dataset.bbox_x), dataset.bbox_x + dataset.bbox_w - w)
        y = min(max(cy - h // 2, dataset.bbox_y), dataset.bbox_y + dataset.bbox_h - h)
        out[i] = (x, y, lab.z)
    return out
