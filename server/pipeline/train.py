"""Step ``train``: the classifier, its encoder initialised from the active autoencoder, learns
from the labels and is measured on the audit set.

load (training and audit labels, the autoencoder) -> compute (train, calibrate, audit) ->
record (a ``classifier`` model version); then it scores candidates (or, for strategies that
need no classifier scores, proposes at once)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from server.db.base import write_transaction
from server.db.tables import Dataset, Job, Label
from server.errors import InvalidInput
from server.jobs.kinds import JobKind
from server.jobs.params import TrainParams
from server.labels.training_set import audit_labels, training_labels
from server.pipeline.context import Report, StepContext
from server.pipeline.versions import Outcome, train_version
from server.pixels.reading import label_origins, read_at, use_all_cores
from server.pixels.source import PatchSource
from server.settings import Settings
from server.versions.service import active_model

EXAMPLES_PER_GALLERY = 8
AUDIT_SCORES = "audit_scores.npz"  # beside a classifier's weights: its audit patches' scores
# strategies whose proposals need the classifier's scores of the candidates
NEEDS_SCORES = ("hybrid", "uncertainty")


@dataclass
class TrainingSet:
    train: list[Label]
    audit: list[Label]
    snapshot_id: int  # the newest label when the set was taken
    ae_id: int
    ae_weights: Path
    # the active classifier, where it grew from the same autoencoder: where training starts
    warm: tuple[int, Path] | None = None


def load_training_set(
    ctx: StepContext, dataset: Dataset, *, warm_start: bool = False
) -> TrainingSet:
    with write_transaction(ctx.sessions) as session:
        ae = active_model(session, dataset_id=dataset.id, kind="ae")
        if ae is None or ae.weights_path is None:
            raise InvalidInput("no autoencoder yet: pretrain first")
        train = training_labels(session, dataset=dataset)
        audit = audit_labels(session, dataset=dataset)
        snapshot_id = (
            session.scalar(select(func.max(Label.id)).where(Label.dataset_id == dataset.id)) or 0
        )
        for label in (*train, *audit):
            session.expunge(label)
        warm = None
        if warm_start:
            current = active_model(
                session, dataset_id=dataset.id, kind="classifier",
                hold_back=ctx.settings.hold_back_worse,
            )  # fmt: skip
            if (
                current is not None
                and current.parent_id == ae.id
                and current.weights_path is not None
                and Path(current.weights_path).is_file()
            ):
                warm = (current.id, Path(current.weights_path))
        return TrainingSet(train, audit, snapshot_id, ae.id, Path(ae.weights_path), warm)


def run(ctx: StepContext, job: Job) -> dict[str, Any]:
    params = TrainParams.of(job.params)
    dataset = ctx.dataset_of(job)
    warm_start = ctx.settings.warm_start if params.warm_start is None else params.warm_start
    data = load_training_set(ctx, dataset, warm_start=warm_start)
    classes = {lab.label for lab in data.train}
    if len(classes) < 2:
        # not a failure: the loop keeps proposing from the autoencoder until both show up
        return {
            "skipped": f"need labels of both classes to train ({len(data.train)} training "
            f"labels so far, all {next(iter(classes), 'none')})",
            "labels": len(data.train),
            "snapshot_id": data.snapshot_id,
        }
    fit = partial(
        fit_classifier,
        dataset=dataset,
        data=data,
        settings=ctx.settings,
        params=params,
        progress=ctx.progress(job.id),
    )
    return train_version(
        ctx,
        job,
        dataset,
        kind="classifier",
        fit=fit,
        parent_id=data.ae_id,
        label_count=len(data.train),
        label_snapshot_id=data.snapshot_id,
    )


def fit_classifier(
    *,
    source: PatchSource,
    dataset: Dataset,
    data: TrainingSet,
    out_dir: Path,
    settings: Settings,
    params: TrainParams,
    progress: Report,
) -> Outcome:
    from models.checkpoint import load_checkpoint, save_checkpoint
    from models.training import train_classifier
    from models.vocab import ARTIFACT_TYPES

    use_all_cores(settings)
    ae, _ = load_checkpoint(data.ae_weights)
    origins = label_origins(dataset, data.train)
    x = read_at(source, dataset, origins, report=lambda f, m: progress(0.1 * f, m))
    y = np.asarray([lab.label == "artifact" for lab in data.train], dtype=np.float32)
    types = np.asarray(
        [
            ARTIFACT_TYPES.index(lab.artifact_type) if lab.artifact_type in ARTIFACT_TYPES else -1
            for lab in data.train
        ],
        dtype=np.int64,
    )
    use_types = bool((types >= 0).sum() >= 10)

    def on_epoch(fraction: float, message: str, _record: dict[str, Any]) -> None:
        progress(0.1 + 0.8 * fraction, message)

    start = load_checkpoint(data.warm[1])[0] if data.warm is not None else None
    result = train_classifier(
        x,
        y,
        autoencoder=ae,
        init=start,
        types=types if use_types else None,
        epochs=params.epochs or settings.train_epochs,
        patience=params.patience,
        tta=settings.tta,
        seed=settings.seed if params.seed is None else params.seed,
        device=settings.device,
        progress=on_epoch,
    )
    metrics: dict[str, Any] = {
        "history": result.history,
        "labels": {"total": len(y), "artifact": int(y.sum()), "clean": int(len(y) - y.sum())},
        "validation": result.validation,
        "temperature": result.temperature,
        "threshold": result.threshold,
        "tta": result.tta,
        "single_view": result.single_view,
        "warm_start_from": data.warm[0] if data.warm is not None else None,
    }
    if data.audit:
        progress(0.92, "evaluating on the audit set")
        metrics["audit"] = audit_report(
            source, dataset, result, data.audit, scores_to=out_dir / AUDIT_SCORES
        )
    path = out_dir / "classifier.pt"
    sha = save_checkpoint(
        path,
        model=result.model,
        norm=(dataset.norm_mean, dataset.norm_std),
        metrics={k: v for k, v in metrics.items() if k != "audit"},
        extra={
            "temperature": result.temperature,
            "threshold": result.threshold,
            "tta": result.tta,
            "single_view_temperature": result.single_view["temperature"],
            "single_view_threshold": result.single_view["threshold"],
            "label_snapshot_id": data.snapshot_id,
            "ae_weights": str(data.ae_weights),
        },
    )
    return Outcome(
        config={
            "architecture": "classifier",
            **result.model.config.to_dict(),
            "temperature": result.temperature,
            "threshold": result.threshold,
            "single_view_threshold": result.single_view["threshold"],
            "warm_start_from": data.warm[0] if data.warm is not None else None,
        },
        metrics=metrics,
        weights_path=path,
        weights_sha256=sha,
    )


def audit_report(
    source: PatchSource,
    dataset: Dataset,
    result: Any,
    audit: list[Label],
    *,
    scores_to: Path | None = None,
) -> dict[str, Any]:
    """The version on the audit set, scored as the pool is (same views, calibration); with
    ``scores_to``, each audit patch's corner and p(artifact) saved there (beside the weights,
    not in the database), for reports finer than the metrics'."""
    from models.calibration import calibrated, predict_logits
    from models.metrics import classification_report
    from models.networks import for_inference

    fast = for_inference(result.model)
    truth = np.asarray([lab.label == "artifact" for lab in audit], dtype=bool)
    origins = label_origins(dataset, audit)
    order = np.lexsort((origins[:, 1], origins[:, 0], origins[:, 2]))  # storage order
    logits = np.empty(len(audit), dtype=np.float64)
    for s in range(0, len(order), 512):
        part = order[s : s + 512]
        logits[part] = predict_logits(fast, read_at(source, dataset, origins[part]), tta=result.tta)
    p = calibrated(logits, result.temperature)
    if scores_to is not None:
        np.savez(scores_to, origins=origins, p=p, artifact=truth)
    report = classification_report(truth, p, threshold=result.threshold)
    report["examples"] = _examples(audit, truth, p, result.threshold)
    return report


def _examples(
    labels: list[Label], truth: np.ndarray, p: np.ndarray, threshold: float
) -> dict[str, Any]:
    pred = p >= threshold

    def items(mask: np.ndarray, order: np.ndarray) -> list[dict[str, Any]]:
        chosen = [i for i in order if mask[i]][:EXAMPLES_PER_GALLERY]
        return [
            {
                "x": labels[i].x,
                "y": labels[i].y,
                "z": labels[i].z,
                "p_artifact": float(p[i]),
                "label": "artifact" if truth[i] else "clean",
            }
            for i in chosen
        ]

    by_p = np.argsort(-p)
    return {
        "true_positive": items(truth & pred, by_p),
        "false_positive": items(~truth & pred, by_p),
        "false_negative": items(truth & ~pred, np.argsort(p)),
        "most_uncertain": items(np.ones_like(truth), np.argsort(np.abs(p - threshold))),
    }


def after(ctx: StepContext, job: Job) -> None:
    """A new classifier scores candidates (then proposes); a training that had labels of one
    class only proposes more from the autoencoder. Labels that arrived meanwhile may already
    justify the next training."""
    from server.labels.service import labels_arrived

    with write_transaction(ctx.sessions) as session:
        version_id = job.result.get("model_version_id")
        if version_id is not None:
            # a version held back (worse on the audit set) does not choose what is labelled
            active = active_model(
                session, dataset_id=job.dataset_id or 0, kind="classifier",
                hold_back=ctx.settings.hold_back_worse,
            )  # fmt: skip
            version_id = active.id if active is not None else version_id
        if version_id is not None and ctx.settings.acquisition in NEEDS_SCORES:
            ctx.start(
                session,
                kind=JobKind.SCORE,
                dataset_id=job.dataset_id,
                params={"model_version_id": version_id},
            )
        else:
            if version_id is None:
                ae = active_model(session, dataset_id=job.dataset_id or 0, kind="ae")
                version_id = ae.id if ae is not None else None
            if version_id is not None:
                ctx.start(
                    session,
                    kind=JobKind.PROPOSE,
                    dataset_id=job.dataset_id,
                    params={"model_version_id": version_id},
                )
    if job.dataset_id is not None:
        labels_arrived(ctx.rt, ctx.sender, dataset_id=job.dataset_id)
