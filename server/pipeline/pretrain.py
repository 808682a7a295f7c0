"""Step ``pretrain``: the autoencoder learns the dataset's tissue from unlabelled patches.

load (a random sample of grid patches) -> compute (train, checkpoint) -> record (an ``ae``
model version); then its features are computed once (``score``)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from models.checkpoint import save_checkpoint
from models.training import pretrain_autoencoder
from server.datasets.service import grid_of
from server.db.base import write_transaction
from server.db.tables import Dataset, Job
from server.jobs.context import Report, StepContext
from server.jobs.kinds import JobKind
from server.jobs.params import PretrainParams
from server.labels.service import labels_arrived
from server.labels.training_set import training_labels
from server.pipeline.versions import Outcome, train_version
from server.pixels.reading import read_at, use_all_cores
from server.pixels.source import PatchSource
from server.settings import Settings


def run(ctx: StepContext, job: Job) -> dict[str, Any]:
    params = PretrainParams.of(job.params)
    dataset = ctx.dataset_of(job)
    fit = partial(
        fit_autoencoder,
        dataset=dataset,
        settings=ctx.settings,
        params=params,
        progress=ctx.progress(job.id),
    )
    return train_version(ctx, job, dataset, kind="ae", fit=fit)


def fit_autoencoder(
    *,
    source: PatchSource,
    dataset: Dataset,
    out_dir: Path,
    settings: Settings,
    params: PretrainParams,
    progress: Report,
) -> Outcome:
    use_all_cores(settings)
    grid = grid_of(dataset)
    n = min(params.patches or settings.pretrain_patches, len(grid))
    epochs = params.epochs or settings.pretrain_epochs
    seed = settings.seed if params.seed is None else params.seed
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(grid), size=n, replace=False))
    patches = read_at(
        source, dataset, grid.origins(indices), report=lambda f, m: progress(0.1 * f, m)
    )

    def on_epoch(fraction: float, message: str, _record: dict[str, Any]) -> None:
        progress(0.1 + 0.9 * fraction, message)

    result = pretrain_autoencoder(
        patches, epochs=epochs, seed=seed, device=settings.device, progress=on_epoch
    )
    metrics = {
        "val_mse": result.val_loss,
        "history": result.history,
        "patches": n,
        "recon_reference": result.recon_reference,
    }
    path = out_dir / "autoencoder.pt"
    sha = save_checkpoint(
        path,
        model=result.model,
        norm=(dataset.norm_mean, dataset.norm_std),
        metrics=metrics,
        extra={"recon_reference": result.recon_reference},
    )
    return Outcome(
        config={"architecture": "autoencoder", **result.model.config.to_dict(), "epochs": epochs},
        metrics=metrics,
        weights_path=path,
        weights_sha256=sha,
    )


def after(ctx: StepContext, job: Job) -> None:
    """A new autoencoder: compute its features (reconstruction error, embedding) once.
    Training labels that waited for an autoencoder (imported before it existed) start their
    training now, not at the next label that happens to arrive; audit labels alone start
    none (they never train)."""
    with write_transaction(ctx.sessions) as session:
        ctx.start(
            session,
            kind=JobKind.SCORE,
            dataset_id=job.dataset_id,
            params={"model_version_id": job.result["model_version_id"]},
        )
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id is not None else None
        waiting = dataset is not None and bool(training_labels(session, dataset=dataset))
    if waiting and job.dataset_id is not None:
        labels_arrived(ctx.rt, ctx.sender, dataset_id=job.dataset_id)
