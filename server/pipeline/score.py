"""Step ``score``: a model version applied to patches, in chunk jobs any GPU worker takes.

- An autoencoder version computes its features of the whole grid once (reconstruction error,
  embedding), never again for the classifiers fine-tuned from it.
- A classifier version scores a candidate set of at most ``ARTIFACT_LOOP_CANDIDATES`` patches
  of the unlabelled pool outside the audit set (0: all of it): the previous round's most
  uncertain, the autoencoder's most anomalous, the nearest neighbours of the patches labelled
  artifact in its embedding, and a fresh random sample for the rest. One view
  per candidate; only a short list nearest the decision boundary gets the ``tta`` views.

load (version, grid, candidates) -> compute (chunks) -> record (arrays in the model store);
then the version proposes the next batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.annotation.proposals import excluded_indices
from server.datasets.service import grid_of, open_source
from server.db.base import write_transaction
from server.db.tables import Dataset, Job, ModelVersion
from server.errors import InvalidInput, NotFound
from server.jobs import state
from server.jobs.kinds import JobKind
from server.jobs.params import ScoreChunkParams, ScoreParams
from server.labels.training_set import training_labels
from server.pipeline.context import Chunked, StepContext
from server.pipeline.features import (
    AEFeatures,
    features_dir,
    read_scores,
    scores_dir,
    scoring_dir,
    switch_scores,
    write_scores,
)
from server.pixels.reading import READ_BATCH, batches_of, use_all_cores
from server.versions.service import active_model


def run(ctx: StepContext, job: Job) -> Chunked:
    params = ScoreParams.of(job.params)
    dataset = ctx.dataset_of(job)
    grid = grid_of(dataset)
    with write_transaction(ctx.sessions) as session:
        version = _version(
            session, dataset_id=dataset.id, version_id=params.model_version_id,
            hold_back=ctx.settings.hold_back_worse,
        )  # fmt: skip
        version_id, kind = version.id, version.kind
        excluded = excluded_indices(session, dataset=dataset, grid=grid) if kind != "ae" else None
    if kind == "ae":
        folder = features_dir(ctx.settings, dataset_id=dataset.id, version_id=version_id)
        total = len(grid)
        n_chunks = AEFeatures(folder).plan(patches=total, chunk_patches=params.chunk_patches)
        message = f"autoencoder features of {total:,} patches in {n_chunks} chunks"
    else:
        assert excluded is not None
        candidates = candidate_set(
            ctx, version=version_id, job_id=job.id, n=len(grid), excluded=excluded
        )
        # a folder of this job's own: the scores before it stay whole until it finishes
        out = scoring_dir(ctx.settings, dataset_id=dataset.id, version_id=version_id, job_id=job.id)
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("chunk-*.npz"):  # a retried job scores a new candidate set
            old.unlink()
        np.save(out / "candidates.npy", candidates)
        total = len(candidates)
        n_chunks = -(-total // params.chunk_patches)
        message = f"scoring {total:,} candidates of {len(grid):,} patches in {n_chunks} chunks"
    size = params.chunk_patches
    with write_transaction(ctx.sessions) as session:
        children = [
            state.create_job(
                session,
                kind=JobKind.SCORE_CHUNK,
                dataset_id=dataset.id,
                parent_id=job.id,
                params={
                    "model_version_id": version_id,
                    "chunk": c,
                    "start": c * size,
                    "stop": min((c + 1) * size, total),
                },
                requested_by="loop",
            ).id
            for c in range(n_chunks)
        ]
    ctx.progress(job.id)(0.0, message)
    return Chunked(
        result={"model_version_id": version_id, "chunks": n_chunks, "patches": total},
        child_kind=JobKind.SCORE_CHUNK,
        children=children,
    )


def _version(
    session: Any, *, dataset_id: int, version_id: int | None, hold_back: bool = True
) -> ModelVersion:
    if version_id is None:
        chosen = active_model(
            session, dataset_id=dataset_id, kind="classifier", hold_back=hold_back
        ) or active_model(session, dataset_id=dataset_id, kind="ae")
        if chosen is None:
            raise InvalidInput("no model to score with: pretrain first")
        return chosen
    version = session.get(ModelVersion, int(version_id))
    if version is None or version.dataset_id != dataset_id:
        raise NotFound(f"no model version {version_id} for this dataset")
    if version.status != "ready" or not version.weights_path:
        raise InvalidInput(f"model version {version_id} is {version.status}, not ready")
    return version


# shares of a bounded candidate set; a fresh random sample of the pool fills the rest
PREVIOUS_SHARE = 0.2  # the previous classifier's most uncertain candidates
ANOMALOUS_SHARE = 0.1  # the autoencoder's highest reconstruction errors
# the nearest unlabelled neighbours (autoencoder embedding, cosine) of the patches labelled
# artifact, an equal number for each of the latest NEIGHBOUR_QUERIES such labels: where the
# few artifacts of the pool lie, which a random sample mostly misses
NEIGHBOUR_SHARE = 0.2
NEIGHBOUR_QUERIES = 256


def candidate_set(
    ctx: StepContext, *, version: int, job_id: int, n: int, excluded: np.ndarray
) -> np.ndarray:
    """Grid indices a classifier version scores, sorted: the whole unlabelled pool outside
    ``excluded`` when it fits ``ARTIFACT_LOOP_CANDIDATES``, else a mix of at most that many. No
    step of it holds the whole index range of the grid."""
    limit = ctx.settings.candidates
    excluded = np.unique(np.asarray(excluded, dtype=np.int64))
    if not limit or n - len(excluded) <= limit:
        return np.setdiff1d(np.arange(n, dtype=np.int64), excluded, assume_unique=True)
    with ctx.sessions() as session:
        current = session.get(ModelVersion, version)
        assert current is not None
        previous = session.scalars(
            select(ModelVersion.id)
            .where(
                ModelVersion.dataset_id == current.dataset_id,
                ModelVersion.kind == "classifier",
                ModelVersion.status == "ready",
                ModelVersion.id < version,
            )
            .order_by(ModelVersion.id.desc())
            .limit(1)
        ).first()
        dataset_id, ae_id = current.dataset_id, current.parent_id
        dataset = session.get(Dataset, dataset_id)
        assert dataset is not None
        queries = _labelled_artifacts(session, dataset)
    anomalous, near = _from_features(
        features_dir(ctx.settings, dataset_id=dataset_id, version_id=ae_id) if ae_id else None,
        k_anomalous=int(limit * ANOMALOUS_SHARE),
        queries=queries,
        k_near=int(limit * NEIGHBOUR_SHARE),
        excluded=excluded,
    )
    chosen = [
        _most_uncertain(
            scores_dir(ctx.settings, dataset_id=dataset_id, version_id=previous)
            if previous
            else None,
            k=int(limit * PREVIOUS_SHARE),
            excluded=excluded,
        ),
        anomalous,
        near,
    ]
    taken = np.unique(np.concatenate(chosen))
    rng = np.random.default_rng([ctx.settings.seed, job_id])
    need = limit - len(taken)
    draw = min(n, need + len(excluded) + len(taken))  # enough that ``need`` survive
    fresh = rng.choice(n, size=draw, replace=False)  # Floyd's sampling: O(draw) memory
    fresh = fresh[~np.isin(fresh, excluded) & ~np.isin(fresh, taken)][:need]
    return np.sort(np.concatenate([taken, fresh]))


def _most_uncertain(folder: Path | None, *, k: int, excluded: np.ndarray) -> np.ndarray:
    """The ``k`` candidates of a previous round nearest p = 0.5, still unlabelled."""
    if folder is None or k <= 0 or not folder.exists():
        return np.empty(0, np.int64)
    scores = read_scores(folder)
    if "index" not in scores:
        return np.empty(0, np.int64)
    keep = ~np.isin(scores["index"], excluded)
    idx, margin = scores["index"][keep], np.nan_to_num(scores["uncertainty"][keep], nan=-1.0)
    if len(idx) > k:
        idx = idx[np.argpartition(-margin, k)[:k]]
    return idx.astype(np.int64)


def _labelled_artifacts(session: Session, dataset: Dataset) -> np.ndarray:
    """Grid indices of the latest :data:`NEIGHBOUR_QUERIES` training labels that say
    artifact (those at positions off the grid, say from an imported file, are left out)."""
    grid = grid_of(dataset)
    artifacts = [
        lab for lab in training_labels(session, dataset=dataset) if lab.label == "artifact"
    ]
    found = []
    for lab in artifacts[-NEIGHBOUR_QUERIES:]:
        try:
            found.append(int(grid.indices(np.asarray([[lab.x, lab.y, lab.z]]))[0]))
        except ValueError:
            continue
    return np.unique(np.asarray(found, dtype=np.int64))


def _from_features(
    folder: Path | None,
    *,
    k_anomalous: int,
    queries: np.ndarray,
    k_near: int,
    excluded: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """In one pass over the autoencoder's features, chunk by chunk: the ``k_anomalous``
    unlabelled patches it reconstructs worst, and the ``k_near // len(queries)`` unlabelled
    patches nearest each query patch in its embedding (cosine similarity)."""
    empty = np.empty(0, np.int64)
    if folder is None or not AEFeatures(folder).complete():
        return empty, empty
    features = AEFeatures(folder)
    each = k_near // len(queries) if len(queries) else 0
    query = _unit(features.take(queries)[1]) if each else np.empty((0, 0), np.float32)
    best_idx, best_err = empty, np.empty(0, np.float32)
    near_idx = np.empty((len(query), 0), np.int64)
    near_sim = np.empty((len(query), 0), np.float32)
    for idx, recon, embed in features.stream(embedding=each > 0):
        keep = ~np.isin(idx, excluded)
        idx = idx[keep]
        if k_anomalous > 0:
            best_idx = np.concatenate([best_idx, idx])
            best_err = np.concatenate([best_err, np.nan_to_num(recon[keep], nan=-np.inf)])
            if len(best_idx) > k_anomalous:
                top = np.argpartition(-best_err, k_anomalous)[:k_anomalous]
                best_idx, best_err = best_idx[top], best_err[top]
        if each:
            sim = query @ _unit(embed[keep]).T  # (queries, patches of the chunk)
            near_idx = np.concatenate([near_idx, np.broadcast_to(idx, sim.shape)], axis=1)
            near_sim = np.concatenate([near_sim, sim], axis=1)
            if near_idx.shape[1] > each:
                top = np.argpartition(-near_sim, each - 1, axis=1)[:, :each]
                near_idx = np.take_along_axis(near_idx, top, axis=1)
                near_sim = np.take_along_axis(near_sim, top, axis=1)
    return best_idx, np.unique(near_idx)


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.nan_to_num(np.asarray(vectors, dtype=np.float32))
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)


def run_chunk(ctx: StepContext, job: Job) -> dict[str, Any]:
    from models.checkpoint import load_checkpoint
    from models.networks import for_inference
    from models.scoring import Scores

    params = ScoreChunkParams.of(job.params)
    dataset = ctx.dataset_of(job)
    grid = grid_of(dataset)
    with write_transaction(ctx.sessions) as session:
        version = session.get(ModelVersion, params.model_version_id)
        if version is None or version.weights_path is None:
            raise NotFound(f"model version {params.model_version_id} has no weights")
        parent = session.get(ModelVersion, version.parent_id) if version.parent_id else None
        weights, kind = Path(version.weights_path), version.kind
        ae_weights = (
            Path(parent.weights_path) if parent is not None and parent.weights_path else None
        )
        ae_id = parent.id if parent is not None else None
    use_all_cores(ctx.settings)
    report = ctx.progress(job.id)
    model, meta = load_checkpoint(weights)
    fast = for_inference(model)  # once per chunk, not once per batch
    if kind == "ae":
        indices = np.arange(params.start, params.stop, dtype=np.int64)
        folder = features_dir(ctx.settings, dataset_id=dataset.id, version_id=version.id)
        scores = _score(dataset, grid, indices, report, autoencoder=fast, meta=meta)
        AEFeatures(folder).write_chunk(
            params.chunk, recon=scores.recon_error, embedding=scores.embedding
        )
        return {"patches": len(indices)}
    assert job.parent_id is not None, "a chunk belongs to its scoring job"
    out = scoring_dir(
        ctx.settings, dataset_id=dataset.id, version_id=version.id, job_id=job.parent_id
    )
    candidates = np.load(out / "candidates.npy")
    indices = candidates[params.start : params.stop]
    extra: dict[str, np.ndarray] = {}
    ae_folder = (
        features_dir(ctx.settings, dataset_id=dataset.id, version_id=ae_id) if ae_id else None
    )
    if ae_weights is not None and (ae_folder is None or not AEFeatures(ae_folder).complete()):
        # the autoencoder's features are not there (yet): compute them for these patches
        ae_model, ae_meta = load_checkpoint(ae_weights)
        ae = _score(
            dataset, grid, indices, report, autoencoder=for_inference(ae_model), meta=ae_meta
        )
        extra = {"recon_error": ae.recon_error, "embedding": ae.embedding}
    scores: Scores = _score(
        dataset,
        grid,
        indices,
        report,
        classifier=fast,
        meta=meta,
        shortlist=ctx.settings.tta_shortlist,
    )
    write_scores(
        out / f"chunk-{params.chunk:06d}.npz",
        index=indices,
        p_artifact=scores.p_artifact,
        uncertainty=scores.margin,
        entropy=scores.entropy,
        **extra,
    )
    return {
        "patches": len(indices),
        "mean_p": float(np.nanmean(scores.p_artifact)) if len(indices) else None,
    }


def _score(
    dataset: Dataset,
    grid: Any,
    indices: np.ndarray,
    report: Any,
    *,
    meta: dict[str, Any],
    classifier: Any = None,
    autoencoder: Any = None,
    shortlist: float = 1.0,
) -> Any:
    from models.scoring import Scores, score_batch, score_with_shortlist

    extra = meta["extra"]
    parts = []
    with open_source(dataset) as source:
        for i, batch in enumerate(batches_of(source, dataset, grid, indices)):
            if classifier is not None:
                single = extra.get("single_view_temperature")
                parts.append(
                    score_with_shortlist(
                        batch,
                        classifier=classifier,
                        tta=int(extra.get("tta", 1)),
                        shortlist=shortlist,
                        temperature=float(extra.get("temperature", 1.0)),
                        single_view_temperature=None if single is None else float(single),
                    )
                )
            else:
                parts.append(
                    score_batch(
                        batch,
                        classifier=None,
                        autoencoder=autoencoder,
                        recon_reference=extra.get("recon_reference"),
                    )
                )
            done = min(len(indices), (i + 1) * READ_BATCH)
            report(done / max(len(indices), 1), f"scored {done:,} patches")
    if not parts:
        empty = np.empty(0, np.float32)
        return Scores(empty, empty, empty, empty, empty, np.empty((0, 0), np.float16))
    return Scores.concat(parts)


def chunks_done(ctx: StepContext, job: Job) -> dict[str, Any]:
    assert job.dataset_id is not None
    ids = {"dataset_id": job.dataset_id, "version_id": int(job.result["model_version_id"])}
    if scoring_dir(ctx.settings, **ids, job_id=job.id).is_dir():  # a classifier's scores
        switch_scores(ctx.settings, **ids, job_id=job.id)
    return {k: job.result.get(k) for k in ("model_version_id", "chunks", "patches")}


def after(ctx: StepContext, job: Job) -> None:
    """A scored version proposes the next batch."""
    with write_transaction(ctx.sessions) as session:
        ctx.start(
            session,
            kind=JobKind.PROPOSE,
            dataset_id=job.dataset_id,
            params={"model_version_id": job.result["model_version_id"]},
        )
