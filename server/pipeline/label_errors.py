"""After a training: the training labels the new classifier confidently contradicts out of
fold become suspects, candidates for re-label tasks.

load (the version's view of its training labels: p(artifact) and features, kept beside its
weights by the training) -> compute (:func:`models.label_errors.find_label_errors`) -> record
(the dataset's ``label_suspects`` rows, replacing those of the check before)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select

from models.label_errors import find_label_errors
from models.networks import Classifier
from models.scoring import score_stream
from server.db.base import utcnow, write_transaction
from server.db.tables import Label, LabelSuspect
from server.jobs.context import StepContext

LABEL_VIEW = "label_view.npz"  # beside a classifier's weights
BATCH = 256


def save_label_view(
    folder: Path,
    *,
    model: Classifier,
    patches: np.ndarray,
    label_ids: list[int],
    labels: np.ndarray,
    temperature: float,
) -> None:
    """The trained classifier's p(artifact) and pooled features of each training patch."""
    view = score_stream(
        (patches[i : i + BATCH] for i in range(0, len(patches), BATCH)),
        classifier=model,
        autoencoder=None,
        temperature=temperature,
    )
    np.savez(
        folder / LABEL_VIEW,
        label_id=np.asarray(label_ids, dtype=np.int64),
        label=np.asarray(labels, dtype=np.int64),
        p_artifact=view.p_artifact.astype(np.float32),
        features=view.embedding.astype(np.float32),
    )


def record_suspects(
    ctx: StepContext, *, dataset_id: int, version_id: int, folder: Path, seed: int
) -> dict[str, Any]:
    """Check the version's training labels; keep its suspects as the dataset's. A summary."""
    path = folder / LABEL_VIEW
    if not path.is_file():
        return {"checked": 0, "suspects": 0, "reason": "no view of the training labels"}
    with np.load(path) as saved:
        label_ids, labels = saved["label_id"], saved["label"]
        p_artifact, features = saved["p_artifact"], saved["features"]
    found = find_label_errors(features, labels, seed=seed)
    now = utcnow()
    rows = [
        {
            "dataset_id": dataset_id,
            "label_id": int(label_ids[i]),
            "model_version_id": version_id,
            "p_artifact": float(p_artifact[i]) if np.isfinite(p_artifact[i]) else None,
            "p_given": float(found.p_given[i]),
            "score": float(found.score[i]),
            "created_at": now,
        }
        for i in found.suspects
    ]
    with write_transaction(ctx.sessions) as session:
        session.execute(delete(LabelSuspect).where(LabelSuspect.dataset_id == dataset_id))
        # a label undone since the training is no suspect any more
        kept = set(
            session.scalars(select(Label.id).where(Label.id.in_([r["label_id"] for r in rows])))
        )
        rows = [r for r in rows if r["label_id"] in kept]
        if rows:
            session.execute(insert(LabelSuspect), rows)
    summary: dict[str, Any] = {"checked": len(labels), "suspects": len(rows)}
    if found.reason is not None:
        summary["reason"] = found.reason
    else:
        summary["thresholds"] = {
            "clean": round(found.thresholds[0], 4),
            "artifact": round(found.thresholds[1], 4),
        }
    return summary
