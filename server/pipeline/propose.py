"""Step ``propose``: a scored version's next batch for annotators.

load (the version's scores, the autoencoder's features, what must not be proposed) ->
compute (the acquisition strategy) -> record (the batch replaces older open proposals);
then, for a dataset that pushes to webKnossos, a sync sends the new batch there."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from server.annotation.proposals import (
    demote_superseded,
    ensure_audit_set,
    excluded_indices,
    replace_proposals,
)
from server.datasets.service import grid_of
from server.db.base import write_transaction
from server.db.tables import Dataset, Job, ModelVersion
from server.errors import NotFound
from server.jobs.context import StepContext
from server.jobs.params import ProposeParams, Strategy
from server.pipeline.features import AEFeatures, features_dir, read_scores, scores_dir
from server.pipeline.sync import push_new_proposals

# bounds of what a proposal step holds in memory, whatever the size of the grid
RESERVOIR = 50_000  # patches sampled uniformly for the cold start's typical patches
TOP_PER_BATCH = 40  # most anomalous patches kept per proposal asked for


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
        batch = replace_proposals(
            session, dataset=ds, grid=grid, model_version_id=version.id, job_id=job.id, picks=picks
        )
    with write_transaction(ctx.sessions) as session:
        demote_superseded(session, dataset_id=dataset.id, first_new_id=batch.first_new_id)
    return {
        "proposed": batch.added,
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
        pool = (
            np.arange(n_patches, dtype=np.int64)
            if n_patches <= RESERVOIR
            else np.unique(  # a large grid: a sample of it, never the whole index range
                np.random.default_rng(seed).choice(n_patches, size=RESERVOIR, replace=False)
            )
        )
        picks = acq.random_batch(pool, excluded=excluded, batch_size=batch_size, seed=seed)
        return [{"index": p.index, "reason": p.reason, "score": p.score} for p in picks]
    if scores is None:  # cold start or recon: the autoencoder's features, streamed
        idx, recon, embed = bounded_features(
            features, excluded=excluded, top=TOP_PER_BATCH * batch_size, seed=seed
        )
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
        return _described(picks, idx, recon_error=recon)
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
    return _described(
        picks,
        idx,
        p_artifact=scores["p_artifact"],
        uncertainty=scores["uncertainty"],
        recon_error=recon,
    )


def _described(picks: list[Any], idx: np.ndarray, **components: np.ndarray) -> list[dict[str, Any]]:
    """Picks as dicts of ``index``, ``reason``, ``score`` and each score component."""
    where = {int(i): n for n, i in enumerate(idx)}
    return [
        {
            "index": p.index,
            "reason": p.reason,
            "score": p.score,
            **{name: float(values[where[p.index]]) for name, values in components.items()},
        }
        for p in picks
    ]


def bounded_features(
    features: AEFeatures, *, excluded: np.ndarray, top: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The autoencoder's features of a bounded set of patches, read chunk by chunk:
    a uniform sample of at most :data:`RESERVOIR` patches (for typical ones) plus the ``top``
    most anomalous allowed ones. Memory does not grow with the grid; on grids of up to
    :data:`RESERVOIR` patches every allowed patch is kept. Sorted by grid index."""
    rng = np.random.default_rng(seed)
    sample = _Kept.empty()  # the reservoir: random keys, the smallest win
    anomalous = _Kept.empty()  # the highest reconstruction errors
    for idx, recon, embed in features.stream():
        chunk = _Kept(idx, recon, embed, rng.random(len(idx)))
        # the acquisition drops excluded patches itself; the sample keeps them so that a
        # small grid is passed on whole, exactly as it is
        sample = sample.join(chunk).smallest(RESERVOIR, by=lambda k: k.key)
        ok = ~np.isin(idx, excluded)
        chunk = _Kept(idx[ok], recon[ok], embed[ok], chunk.key[ok])
        anomalous = anomalous.join(chunk).smallest(
            top, by=lambda k: -np.nan_to_num(k.recon, nan=-np.inf)
        )
    both = sample.join(anomalous)
    if both.idx.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32), np.empty((0, 0), np.float16)
    idx, first = np.unique(both.idx, return_index=True)
    return idx, both.recon[first], both.embed[first]


@dataclass
class _Kept:
    idx: np.ndarray
    recon: np.ndarray
    embed: np.ndarray
    key: np.ndarray

    @classmethod
    def empty(cls) -> _Kept:
        return cls(np.empty(0, np.int64), np.empty(0, np.float32), np.empty((0, 0)), np.empty(0))

    def join(self, other: _Kept) -> _Kept:
        if self.idx.size == 0:
            return other
        return _Kept(
            *(
                np.concatenate([getattr(self, f), getattr(other, f)])
                for f in ("idx", "recon", "embed", "key")
            )
        )

    def smallest(self, n: int, *, by: Any) -> _Kept:
        if self.idx.size <= n:
            return self
        keep = np.argpartition(by(self), n)[:n]
        return _Kept(self.idx[keep], self.recon[keep], self.embed[keep], self.key[keep])


def after(ctx: StepContext, job: Job) -> None:
    """New proposals of a dataset that pushes tasks to webKnossos go there at once."""
    if job.dataset_id is not None:
        push_new_proposals(ctx, dataset_id=job.dataset_id)
