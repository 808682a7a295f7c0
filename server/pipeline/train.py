"""Step ``train``: the classifier, its encoder initialised from the active autoencoder, learns
from the labels and is measured on the audit set.

load (training labels, the autoencoder) -> compute (train, calibrate) -> record (a
``classifier`` model version) -> measure it and every other version in play on the current
audit set (:mod:`server.pipeline.audit`); then it scores candidates (or, for strategies that
need no classifier scores, proposes at once)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from models.checkpoint import load_checkpoint, save_checkpoint
from models.training import train_classifier
from models.vocab import ARTIFACT_TYPES
from server.acquisition import registry
from server.db.base import write_transaction
from server.db.tables import Dataset, Job, Label
from server.errors import InvalidInput
from server.jobs.context import Report, StepContext
from server.jobs.kinds import JobKind
from server.jobs.params import TrainParams
from server.labels.service import labels_arrived
from server.labels.training_set import audit_labels, training_set
from server.pipeline.audit import remeasure
from server.pipeline.label_errors import record_suspects, save_label_view
from server.pipeline.versions import Outcome, train_version
from server.pixels.reading import label_origins, read_at, use_all_cores
from server.pixels.source import PatchSource
from server.settings import Settings
from server.versions.service import active_model, model_dir

log = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    train: list[Label]
    weights: list[float]  # per training label: how much it counts (see server.labels.consensus)
    aggregation: str
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
        chosen = training_set(session, dataset=dataset)
        train = chosen.labels
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
        return TrainingSet(
            train, chosen.weights, chosen.aggregation, audit, snapshot_id, ae.id,
            Path(ae.weights_path), warm,
        )  # fmt: skip


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
    result = train_version(
        ctx,
        job,
        dataset,
        kind="classifier",
        fit=fit,
        parent_id=data.ae_id,
        label_count=len(data.train),
        label_snapshot_id=data.snapshot_id,
    )
    result["label_errors"] = check_labels(ctx, dataset, result["model_version_id"], params)
    # the new version and every other in play on the same, current audit set: only then
    # does the hold-back rule decide which one is active
    ctx.progress(job.id)(0.95, "measuring the versions on the audit set")
    try:
        result["audit"] = remeasure(ctx, dataset)
    except Exception as exc:
        # the version is recorded: measuring it again is the audit job's work, not a reason
        # to train once more (a retried training would make another version)
        log.warning("measuring on the audit set failed, queued again: %s", exc)
        with write_transaction(ctx.sessions) as session:
            ctx.start(
                session, kind=JobKind.AUDIT, dataset_id=dataset.id,
                params={"trigger": "measurement after training failed"},
            )  # fmt: skip
        result["audit"] = {"error": f"{type(exc).__name__}: {exc}"}
    return result


def check_labels(
    ctx: StepContext, dataset: Dataset, version_id: int, params: TrainParams
) -> dict[str, Any]:
    """The training labels the new version confidently contradicts out of fold become the
    dataset's suspects (:mod:`server.pipeline.label_errors`); a failure here costs only them."""
    try:
        return record_suspects(
            ctx,
            dataset_id=dataset.id,
            version_id=version_id,
            folder=model_dir(ctx.settings, dataset_id=dataset.id, version_id=version_id),
            seed=ctx.settings.seed if params.seed is None else params.seed,
        )
    except Exception as exc:
        log.warning("checking the training labels failed: %s", exc)
        return {"error": f"{type(exc).__name__}: {exc}"}


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
    weights = np.asarray(data.weights, dtype=np.float32)
    # all ones (one label per patch): exactly the unweighted training
    weighted = bool((weights != 1.0).any())

    def on_epoch(fraction: float, message: str, _record: dict[str, Any]) -> None:
        progress(0.1 + 0.8 * fraction, message)

    start = load_checkpoint(data.warm[1])[0] if data.warm is not None else None
    result = train_classifier(
        x,
        y,
        autoencoder=ae,
        init=start,
        types=types if use_types else None,
        sample_weights=weights if weighted else None,
        epochs=params.epochs or settings.train_epochs,
        patience=params.patience,
        tta=settings.tta,
        seed=settings.seed if params.seed is None else params.seed,
        device=settings.device,
        progress=on_epoch,
    )
    metrics: dict[str, Any] = {
        "history": result.history,
        "labels": {
            "total": len(y),
            "artifact": int(y.sum()),
            "clean": int(len(y) - y.sum()),
            "aggregation": data.aggregation,
            "weighted": int((weights != 1.0).sum()),
        },
        "validation": result.validation,
        "temperature": result.temperature,
        "threshold": result.threshold,
        "tta": result.tta,
        "single_view": result.single_view,
        "warm_start_from": data.warm[0] if data.warm is not None else None,
    }
    save_label_view(
        out_dir,
        model=result.model,
        autoencoder=ae,
        patches=x,
        label_ids=[lab.id for lab in data.train],
        labels=y.astype(np.int64),
        temperature=result.single_view["temperature"],
    )
    path = out_dir / "classifier.pt"
    sha = save_checkpoint(
        path,
        model=result.model,
        norm=(dataset.norm_mean, dataset.norm_std),
        metrics=metrics,
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


def after(ctx: StepContext, job: Job) -> None:
    """A new classifier scores candidates (then proposes); a training that had labels of one
    class only proposes more from the autoencoder. Labels that arrived meanwhile may already
    justify the next training."""
    with write_transaction(ctx.sessions) as session:
        version_id = job.result.get("model_version_id")
        if version_id is not None:
            # a version held back (worse on the audit set) does not choose what is labelled
            active = active_model(
                session, dataset_id=job.dataset_id or 0, kind="classifier",
                hold_back=ctx.settings.hold_back_worse,
            )  # fmt: skip
            version_id = active.id if active is not None else version_id
        if version_id is not None and registry.get(ctx.settings.acquisition).needs_scores:
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
