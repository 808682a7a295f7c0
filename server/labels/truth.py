"""Ground truth files: ``ground_truth.csv`` beside a dataset, one row per patch, used by
``simulate`` and the demo as the annotator and by ``predict`` to score a dense map.

Columns are read by name: ``x,y,z`` (the patch origin, mag-1 voxels), ``label`` and an
optional ``type``. ``label`` is ``artifact``/``clean``, ``1``/``0`` or ``true``/``false``
(any case); any other value is refused, so a file is never silently read as all clean.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.vocab import ARTIFACT_TYPES
from server.errors import InvalidInput

POSITIVE = frozenset({"artifact", "1", "true"})
NEGATIVE = frozenset({"clean", "0", "false"})


@dataclass(frozen=True)
class TruthRow:
    origin: tuple[int, int, int]
    artifact: bool
    artifact_type: str


def _values_found(counts: Counter[str], limit: int = 8) -> str:
    shown = [f"{value!r} ({n:,})" for value, n in counts.most_common(limit)]
    more = len(counts) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def read_truth(dataset: Path, *, require_positive: bool = True) -> list[TruthRow]:
    """Every row of the dataset's ``ground_truth.csv``, checked strictly."""
    path = dataset / "ground_truth.csv"
    if not path.exists():
        raise InvalidInput(f"{dataset} has no ground_truth.csv")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        missing = {"x", "y", "z", "label"} - set(columns)
        if missing:
            raise InvalidInput(
                f"{path.name} lacks columns {', '.join(sorted(missing))} "
                f"(found: {', '.join(columns) or 'none'})"
            )
        raw = list(reader)
    values = Counter((r["label"] or "").strip().lower() for r in raw)
    unknown = Counter({v: n for v, n in values.items() if v not in POSITIVE | NEGATIVE})
    if unknown:
        raise InvalidInput(
            f"{path.name}: column 'label' holds values that are neither artifact/clean, 1/0 "
            f"nor true/false: {_values_found(unknown)}; values found: {_values_found(values)}"
        )
    if require_positive and not any(values[v] for v in POSITIVE):
        raise InvalidInput(
            f"{path.name}: column 'label' has no artifact (artifact, 1 or true) in "
            f"{len(raw):,} rows; values found: {_values_found(values) or 'none'}"
        )
    rows = []
    for line, r in enumerate(raw, start=2):
        try:
            origin = (int(r["x"]), int(r["y"]), int(r["z"]))
        except (TypeError, ValueError):
            raise InvalidInput(
                f"{path.name} line {line}: x, y, z must be integers, got "
                f"{r['x']!r}, {r['y']!r}, {r['z']!r}"
            ) from None
        rows.append(
            TruthRow(
                origin=origin,
                artifact=r["label"].strip().lower() in POSITIVE,
                artifact_type=(r.get("type") or "").strip(),
            )
        )
    return rows


def load_truth(dataset: Path, *, require_positive: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Patch origins ``(n, 3)`` and labels (1 = artifact) from ``ground_truth.csv``."""
    rows = read_truth(dataset, require_positive=require_positive)
    origins = np.asarray([r.origin for r in rows], dtype=np.int64).reshape(-1, 3)
    labels = np.asarray([r.artifact for r in rows], dtype=bool)
    return origins, labels


def load_truth_types(dataset: Path, n: int) -> list[str | None]:
    """The ``type`` column of ``ground_truth.csv``, where the file has one (the annotator
    names the artifact); None for rows without a known type."""
    with (dataset / "ground_truth.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    found = [(r.get("type") or "").strip().lower() or None for r in rows]
    return [t if t in ARTIFACT_TYPES else None for t in found][:n] + [None] * max(0, n - len(found))
