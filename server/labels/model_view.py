"""The model as one more rater: the newest classifier's P(artifact) of each label it trained
on, read out of fold (its features and logit through a read-out that never saw the label),
kept beside its weights by the label check after training (:mod:`server.pipeline.label_errors`)
and read by the annotators' report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.tables import ModelVersion
from server.db.vocabulary import VersionStatus

MODEL_VIEW = "model_view.npz"


def model_view(session: Session, *, dataset_id: int) -> dict[int, float]:
    """Label id -> the newest ready classifier's out-of-fold P(artifact) of its position ({}
    when no version has a view)."""
    paths = session.scalars(
        select(ModelVersion.weights_path)
        .where(
            ModelVersion.dataset_id == dataset_id,
            ModelVersion.kind == "classifier",
            ModelVersion.status == VersionStatus.READY,
        )
        .order_by(ModelVersion.id.desc())
    )
    for weights in paths:
        path = Path(weights).parent / MODEL_VIEW if weights else None
        if path is not None and path.is_file():
            with np.load(path) as saved:
                ids, p = saved["label_id"].tolist(), saved["p_artifact"].tolist()
            return dict(zip(ids, p, strict=True))
    return {}
