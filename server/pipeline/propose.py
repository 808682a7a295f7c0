"""Step ``propose``: a scored version's next batch for annotators.

load (the version's scores, the autoencoder's features, what must not be proposed) ->
compute (the acquisition strategy's ``propose``, suspect labels competing with new patches) -> record (the batch replaces older open
proposals); then, for a dataset that pushes to webKnossos, a sync sends the new batch there."""

from __future__ import annotations

from typing import Any

from server.acquisition import registry
from server.acquisition.candidates import NotScored, Pool
from server.annotation.proposals import (
    demote_superseded,
    ensure_audit_set,
    excluded_indices,
    replace_proposals,
)
from server.annotation.relabel import relabel_candidates
from server.datasets.service import grid_of
from server.db.base import write_transaction
from server.db.tables import Dataset, Job, ModelVersion
from server.errors import InvalidInput, NotFound
from server.jobs.context import StepContext
from server.jobs.params import ProposeParams
from server.pipeline.sync import push_new_proposals
from server.versions.features import AEFeatures, features_dir, read_scores, scores_dir


def run(ctx: StepContext, job: Job) -> dict[str, Any]:
    params = ProposeParams.of(job.params)
    dataset = ctx.dataset_of(job)
    grid = grid_of(dataset)
    strategy = registry.get(params.strategy or ctx.settings.acquisition)
    batch_size = params.batch_size or ctx.settings.batch_size
    seed = ctx.settings.seed * 1_000_003 + job.id
    with write_transaction(ctx.sessions) as session:
        version = session.get(ModelVersion, params.model_version_id or 0)
        if version is None or version.dataset_id != dataset.id:
            raise NotFound(f"no model version {params.model_version_id} for this dataset")
        ae_id = version.id if version.kind == "ae" else version.parent_id
        classifier = version.kind == "classifier"
        audit_count = ensure_audit_set(
            session, dataset=dataset, grid=grid, size=ctx.settings.audit_size
        )
        excluded = excluded_indices(session, dataset=dataset, grid=grid)
        relabels = relabel_candidates(session, dataset=dataset, grid=grid)
    pool = Pool(
        n_patches=len(grid),
        excluded=excluded,
        features=AEFeatures(
            features_dir(ctx.settings, dataset_id=dataset.id, version_id=ae_id or 0)
        ),
        scores=read_scores(scores_dir(ctx.settings, dataset_id=dataset.id, version_id=version.id))
        if classifier and strategy.needs_scores
        else None,
        relabels=relabels,
    )
    try:
        picks = strategy.propose(pool, batch_size=batch_size, seed=seed, classifier=classifier)
    except NotScored as exc:
        raise InvalidInput(
            f"version {version.id} cannot propose with {strategy.name}: {exc}"
        ) from None
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
        "relabels_chosen": sum(1 for p in picks if p.get("relabel") is not None),
        "audit_set": audit_count,
        "model_version_id": version.id,
        "strategy": strategy.described_as(classifier=classifier),
    }


def after(ctx: StepContext, job: Job) -> None:
    """New proposals of a dataset that pushes tasks to webKnossos go there at once."""
    if job.dataset_id is not None:
        push_new_proposals(ctx, dataset_id=job.dataset_id)
