"""Ground truth files: ``ground_truth.csv`` beside a dataset, one row per patch, used by
``simulate`` as the annotator and by ``predict`` to score a dense map."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from server.errors import InvalidInput


def load_truth(dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    """Patch origins ``(n, 3)`` and labels (1 = artifact) from ``ground_truth.csv``."""
    path = dataset / "ground_truth.csv"
    if not path.exists():
        raise InvalidInput(f"{dataset} has no ground_truth.csv")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"x", "y", "z", "label"} - set(reader.fieldnames or [])
        if missing:
            raise InvalidInput(f"ground_truth.csv lacks columns {', '.join(sorted(missing))}")
        rows = list(reader)
    origins = np.asarray([[int(r["x"]), int(r["y"]), int(r["z"])] for r in rows], dtype=np.int64)
    labels = np.asarray([r["label"].strip().lower() == "artifact" for r in rows], dtype=bool)
    return origins, labels
