"""After a training: the training labels the new classifier confidently contradicts out of
fold become suspects, candidates for re-label tasks.

load (the version's view of its training labels: p(artifact) and features, kept beside its
weights by the training) -> the model's view of each labelled position, read out of fold (a
class-balanced logistic regression on the classifier's pooled features and its own logit of
the patch, K folds: :func:`models.label_errors.out_of_fold`; the classifier saw every label,
the read-out that turns it into a probability did not see the label it judges) -> the
consensus of every label with that view as one more rater (:func:`models.label_errors.contradicted`) -> record (the dataset's
``label_suspects`` rows, replacing those of the check before; the view itself in
``model_view.npz``, from which the annotators' report measures everyone against the model).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, insert

from models.label_errors import DEFAULT_FOLDS, SUSPECT_AT, at_prevalence, contradicted, out_of_fold
from models.networks import Autoencoder, Classifier
from models.scoring import score_stream
from server.db.base import utcnow, write_transaction
from server.db.tables import Dataset, Label, LabelSuspect
from server.jobs.context import StepContext
from server.labels.consensus import label_weights
from server.labels.model_view import MODEL_VIEW
from server.labels.training_set import training_groups

LABEL_VIEW = "label_view.npz"  # beside a classifier's weights
BATCH = 256
# what the out-of-fold read-out learns from: the classifier's pooled features and its own
# logit of each training patch. Chosen on the kept stores of the annotator-noise benchmark's
# seeds 10-14 (bench/label_error_views.py): average precision of P(wrong) for flipped labels
# 0.92 against 0.81 for the autoencoder embedding beside the features (the check before), 0.84
# for the features alone and 0.89 for the classifier's own p(artifact) unrecalibrated
VIEW_INPUTS = "features+logit"


def save_label_view(
    folder: Path,
    *,
    model: Classifier,
    autoencoder: Autoencoder | None,
    patches: np.ndarray,
    label_ids: list[int],
    labels: np.ndarray,
    temperature: float,
) -> None:
    """The trained classifier's p(artifact) and pooled features of each training patch, and
    the autoencoder's embedding of it (features no label ever shaped; the check reads the
    first two, bench/label_error_views.py compares views with all three)."""

    def batches() -> Any:
        return (patches[i : i + BATCH] for i in range(0, len(patches), BATCH))

    view = score_stream(batches(), classifier=model, autoencoder=None, temperature=temperature)
    extra = {}
    if autoencoder is not None:
        ae = score_stream(batches(), classifier=None, autoencoder=autoencoder)
        extra["ae_features"] = ae.embedding.astype(np.float32)
    np.savez(
        folder / LABEL_VIEW,
        label_id=np.asarray(label_ids, dtype=np.int64),
        label=np.asarray(labels, dtype=np.int64),
        p_artifact=view.p_artifact.astype(np.float32),
        features=view.embedding.astype(np.float32),
        **extra,
    )


def view_inputs(saved: Mapping[str, np.ndarray]) -> np.ndarray:
    """The read-out's inputs per training label: the classifier's pooled features beside its
    own logit of the patch."""
    p = np.clip(np.asarray(saved["p_artifact"], np.float64), 1e-6, 1 - 1e-6)
    logit = np.log(p / (1 - p))
    return np.hstack([np.asarray(saved["features"], np.float64), logit[:, None]])


def record_suspects(
    ctx: StepContext, *, dataset_id: int, version_id: int, folder: Path, seed: int
) -> dict[str, Any]:
    """Check the version's training labels; keep its suspects as the dataset's. A summary."""
    path = folder / LABEL_VIEW
    if not path.is_file():
        return {"checked": 0, "suspects": 0, "reason": "no view of the training labels"}
    with np.load(path) as saved:
        label_ids, labels = saved["label_id"], saved["label"]
        p_artifact = saved["p_artifact"]
        features = view_inputs(saved)
    counts = np.bincount(labels, minlength=2)
    if counts.min() < DEFAULT_FOLDS:
        fewest = int(np.argmin(counts))
        reason = (
            f"{int(counts[fewest])} labels of class {fewest}: at least {DEFAULT_FOLDS} of each "
            f"class are needed for {DEFAULT_FOLDS}-fold out-of-fold probabilities"
        )
        return {"checked": len(labels), "suspects": 0, "reason": reason}
    p_model = at_prevalence(out_of_fold(features, labels, folds=DEFAULT_FOLDS, seed=seed), labels)
    np.savez(folder / MODEL_VIEW, label_id=label_ids, p_artifact=p_model.astype(np.float32))
    now = utcnow()
    with write_transaction(ctx.sessions) as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            return {"checked": 0, "suspects": 0, "reason": "the dataset is gone"}
        groups = training_groups(session, dataset=dataset)
        position = {lab.id: key for key, labs in groups.items() for lab in labs}
        # the version's own P(artifact) of each position it trained on
        seen = {
            position[int(i)]: float(p)
            for i, p in zip(label_ids, p_artifact, strict=True)
            if int(i) in position
        }
        model = {
            position[int(i)]: float(p)
            for i, p in zip(label_ids, p_model, strict=True)
            if int(i) in position
        }
        found = [
            (lab, wrong)
            for lab, wrong in suspects_of(groups, model=model, weights=label_weights(session))
            if position[lab.id] in model  # a position the training saw (a new one: next time)
        ]
        rows = [
            {
                "dataset_id": dataset_id,
                "label_id": lab.id,
                "model_version_id": version_id,
                "p_artifact": _finite(seen.get(position[lab.id], float("nan"))),
                "p_given": _given(model[position[lab.id]], lab),
                "score": wrong,
                "created_at": now,
            }
            for lab, wrong in found
        ]
        session.execute(delete(LabelSuspect).where(LabelSuspect.dataset_id == dataset_id))
        if rows:
            session.execute(insert(LabelSuspect), rows)
    return {
        "checked": len(labels),
        "suspects": len(rows),
        "model_view": VIEW_INPUTS,
        "suspect_at": SUSPECT_AT,
    }


def suspects_of(
    groups: dict[Hashable, list[Label]],
    *,
    model: dict[Hashable, float],
    weights: dict[str, float],
    at: float = SUSPECT_AT,
) -> list[tuple[Label, float]]:
    """Each annotator's latest label of every position the consensus with the model contradicts
    (P(wrong) at least ``at``), most doubtful first; annotators at label weight 0 are left out
    of the consensus and the list."""
    latest = {
        (key, lab.annotator): lab
        for key, labs in groups.items()
        for lab in labs
        if weights.get(lab.annotator, 1.0) > 0
    }
    counted = list(latest.values())
    triples = [
        (key, lab.annotator, int(lab.label == "artifact")) for (key, _), lab in latest.items()
    ]
    wrong = contradicted(triples, model=model, weights=weights)
    found = [(lab, float(w)) for lab, w in zip(counted, wrong, strict=True) if w >= at]
    return sorted(found, key=lambda pair: (-pair[1], pair[0].id))


def _given(p_artifact: float, label: Label) -> float:
    """The model's out-of-fold P(the class the label gave)."""
    return p_artifact if label.label == "artifact" else 1.0 - p_artifact


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None
