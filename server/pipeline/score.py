"""Step ``score``: a model version applied to patches, in chunk jobs any GPU worker takes.

- An autoencoder version computes its features of the whole grid once (reconstruction error,
  embedding), never again for the classifiers fine-tuned from it.
- A classifier version scores a candidate set of at most ``ARTIFACT_LOOP_CANDIDATES`` patches
  of the unlabelled pool outside the audit set (0: all of it), chosen by the acquisition
  strategy (``server.acquisition``: its ``scoring`` policy). One view per candidate; only a
  short list nearest the decision boundary gets the ``tta`` views.

load (version, grid, candidates) -> compute (chunks) -> record (arrays in the model store);
then the version proposes the next batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.acquisition import registry
from server.acquisition.candidates import ScoringInputs
from server.annotation.proposals import excluded_indices
from server.datasets.service import grid_of, open_source
from server.db.base import write_transaction
from server.db.tables import Dataset, Job, ModelVersion
from server.db.vocabulary import VersionStatus
from server.errors import InvalidInput, NotFound
from server.jobs import state
from server.jobs.context import Chunked, StepContext
from server.jobs.kinds import JobKind
from server.jobs.params import ScoreChunkParams, ScoreParams
from server.labels.training_set import training_labels
from server.pixels.reading import READ_BATCH, batches_of, use_all_cores
from server.versions.features import (
    AEFeatures,
    features_dir,
    read_scores,
    scores_dir,
    scoring_dir,
    switch_scores,
    write_scores,
)
from server.versions.service import active_model


def run(ctx: StepContext, job: Job) -> Chunked:
    params = ScoreParams.of(job.params)
    dataset = ctx.dataset_of(job)
    grid = grid_of(dataset)
    strategy = registry.get(params.strategy or ctx.settings.acquisition)
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
        inputs = scoring_inputs(
            ctx, version=version_id, job_id=job.id, n=len(grid), excluded=excluded
        )
        candidates = strategy.candidate_set(inputs)
        # a folder of this job's own: the scores before it stay whole until it finishes
        out = scoring_dir(ctx.settings, dataset_id=dataset.id, version_id=version_id, job_id=job.id)
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("chunk-*.npz"):  # a retried job scores a new candidate set
            old.unlink()
        np.save(out / "candidates.npy", candidates)
        total = len(candidates)
        if total == 0:  # every patch labelled or held out: scored, with nothing left to propose
            nothing = np.empty(0, np.float32)
            write_scores(
                out / "chunk-000000.npz", index=np.empty(0, np.int64), p_artifact=nothing,
                uncertainty=nothing, entropy=nothing,
            )  # fmt: skip
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
        result={
            "model_version_id": version_id,
            "chunks": n_chunks,
            "patches": total,
            "strategy": strategy.name,
        },
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
    if version.status != VersionStatus.READY or not version.weights_path:
        raise InvalidInput(f"model version {version_id} is {version.status}, not ready")
    return version


def scoring_inputs(
    ctx: StepContext, *, version: int, job_id: int, n: int, excluded: np.ndarray
) -> ScoringInputs:
    """What a strategy's candidate set is built from: the costly parts (the previous
    classifier's scores, the patches labelled artifact) are read only if it asks."""
    with ctx.sessions() as session:
        current = session.get(ModelVersion, version)
        assert current is not None
        dataset_id, ae_id = current.dataset_id, current.parent_id

    def previous_scores() -> dict[str, np.ndarray] | None:
        with ctx.sessions() as session:
            previous = session.scalars(
                select(ModelVersion.id)
                .where(
                    ModelVersion.dataset_id == dataset_id,
                    ModelVersion.kind == "classifier",
                    ModelVersion.status == VersionStatus.READY,
                    ModelVersion.id < version,
                )
                .order_by(ModelVersion.id.desc())
                .limit(1)
            ).first()
        folder = (
            scores_dir(ctx.settings, dataset_id=dataset_id, version_id=previous)
            if previous
            else None
        )
        return read_scores(folder) if folder is not None and folder.exists() else None

    def labelled_artifacts(k: int) -> np.ndarray:
        with ctx.sessions() as session:
            dataset = session.get(Dataset, dataset_id)
            assert dataset is not None
            return _labelled_artifacts(session, dataset, k=k)

    return ScoringInputs(
        n_patches=n,
        excluded=excluded,
        limit=ctx.settings.candidates,
        seed=(ctx.settings.seed, job_id),
        features=AEFeatures(features_dir(ctx.settings, dataset_id=dataset_id, version_id=ae_id))
        if ae_id
        else None,
        previous_scores=previous_scores,
        labelled_artifacts=labelled_artifacts,
    )


def _labelled_artifacts(session: Session, dataset: Dataset, *, k: int) -> np.ndarray:
    """Grid indices of the latest ``k`` training labels that say artifact (those at
    positions off the grid, say from an imported file, are left out)."""
    grid = grid_of(dataset)
    artifacts = [
        lab for lab in training_labels(session, dataset=dataset) if lab.label == "artifact"
    ]
    found = []
    for lab in artifacts[-k:] if k else []:
        try:
            found.append(int(grid.indices(np.asarray([[lab.x, lab.y, lab.z]]))[0]))
        except ValueError:
            continue
    return np.unique(np.asarray(found, dtype=np.int64))


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
    return {k: job.result.get(k) for k in ("model_version_id", "chunks", "patches", "strategy")}


def after(ctx: StepContext, job: Job) -> None:
    """A scored version proposes the next batch."""
    with write_transaction(ctx.sessions) as session:
        ctx.start(
            session,
            kind=JobKind.PROPOSE,
            dataset_id=job.dataset_id,
            params={
                "model_version_id": job.result["model_version_id"],
                **({"strategy": s} if (s := ScoreParams.of(job.params).strategy) else {}),
            },
        )
