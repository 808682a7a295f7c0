"""Step ``propose``: a scored version's next batch for annotators.

load (the version's scores, the autoencoder's features, what must not be proposed) ->
compute (the acquisition strategy) -> record (the batch replaces older open proposals);
then, for a dataset that pushes to webKnossos, a sync sends the new batch there."""

from __future__ import annotations

from typing import Any

import numpy as np

from server.annotation.proposals import ensure_audit_set, excluded_indices, replace_proposals
from server.datasets.service import grid_of
from server.db.base import write_transaction
from server.db.tables import Dataset, Job, ModelVersion
from server.errors import NotFound
from server.jobs.params import ProposeParams, Strategy
from server.pipeline.context import StepContext
from server.pipeline.features import AEFeatures, features_dir, read_scores, scores_dir


def run(ctx: StepContext, job: Job) -> dict[str, Any]:
    params = ProposeParams.of(job.params)
    dataset = ctx.dataset_of(job)
    grid = grid_of(dataset)
    strategy: Strategy = params.strategy or ctx.settings.acquisition
    batch_size = params.batch_size or ctx.settings.batch_size
    seed = ctx.settings.seed * 1_000_003 + job.id
    with write_transaction(ctx.sessions) as session:
        version = session.get(ModelVersion, params.model_version_id or 0)
        if version is None or version.dataset_id != dataset.id:
            raise NotFound(f"no model version {params.model_version_id} for this dataset")
        ae_id = version.id if version.kind == "ae" else version.parent_id
        kind = version.kind
        audit_count = ensure_audit_set(
            session, dataset=dataset, grid=grid, size=ctx.settings.audit_size
        )
        excluded = excluded_indices(session, dataset=dataset, grid=grid)
    features = AEFeatures(features_dir(ctx.settings, dataset_id=dataset.id, version_id=ae_id or 0))
    picks = choose_batch(
        strategy if kind == "classifier" or strategy == "random" else "cold_start",
        n_patches=len(grid),
        features=features,
        scores=read_scores(scores_dir(ctx.settings, dataset_id=dataset.id, version_id=version.id))
        if kind == "classifier" and strategy in ("hybrid", "uncertainty")
        else None,
        excluded=excluded,
        batch_size=batch_size,
        seed=seed,
    )
    with write_transaction(ctx.sessions) as session:
        ds = session.get(Dataset, dataset.id)
        assert ds is not None
        added = replace_proposals(
            session, dataset=ds, grid=grid, model_version_id=version.id, job_id=job.id, picks=picks
        )
    return {
        "proposed": added,
        "audit_set": audit_count,
        "model_version_id": version.id,
        "strategy": strategy if kind == "classifier" or strategy == "random" else "cold start",
    }


def choose_batch(
    strategy: str,
    *,
    n_patches: int,
    features: AEFeatures,
    scores: dict[str, np.ndarray] | None,
    excluded: np.ndarray,
    batch_size: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The next batch as dicts of ``index``, ``reason`` and score components."""
    from models import acquisition as acq

    if strategy == "random":
        picks = acq.random_batch(
            np.arange(n_patches, dtype=np.int64),
            excluded=excluded,
            batch_size=batch_size,
            seed=seed,
        )
        return [{"index": p.index, "reason": p.reason, "score": p.score} for p in picks]
    if scores is None:  # cold start or recon: the autoencoder's features of the whole grid
        idx, recon, embed = _all_features(features)
        if strategy == "recon":
            picks = acq.recon_batch(idx, recon, excluded=excluded, batch_size=batch_size)
        else:
            picks = acq.cold_start_batch(
                idx,
                recon_error=recon,
                embedding=embed,
                excluded=excluded,
                batch_size=batch_size,
                seed=seed,
            )
        where = {int(i): n for n, i in enumerate(idx)}
        return [
            {
                "index": p.index,
                "reason": p.reason,
                "score": p.score,
                "recon_error": float(recon[where[p.index]]),
            }
            for p in picks
        ]
    idx = scores["index"]
    if "recon_error" in scores:  # computed beside the scores when the features were missing
        recon, embed = scores["recon_error"], scores["embedding"]
    else:
        recon, embed = features.take(idx)
    if strategy == "uncertainty":
        picks = acq.uncertainty_batch(
            idx, scores["p_artifact"], excluded=excluded, batch_size=batch_size
        )
    else:
        picks = acq.hybrid_batch(
            idx,
            p_artifact=scores["p_artifact"],
            recon_error=recon,
            embedding=embed,
            excluded=excluded,
            batch_size=batch_size,
            seed=seed,
        )
    where = {int(i): n for n, i in enumerate(idx)}
    return [
        {
            "index": p.index,
            "reason": p.reason,
            "score": p.score,
            "p_artifact": float(scores["p_artifact"][where[p.index]]),
            "uncertainty": float(scores["uncertainty"][where[p.index]]),
            "recon_error": float(recon[where[p.index]]),
        }
        for p in picks
    ]


def _all_features(features: AEFeatures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = list(features.stream())
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.float32), np.empty((0, 0), np.float16)
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]


def after(ctx: StepContext, job: Job) -> None:
    """New proposals of a dataset that pushes tasks to webKnossos go there at once."""
    from server.pipeline.sync import push_new_proposals

    if job.dataset_id is not None:
        push_new_proposals(ctx, dataset_id=job.dataset_id)
