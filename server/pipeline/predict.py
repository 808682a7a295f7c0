"""Step ``predict``: a dense artifact map of the dataset (or a box) written back as
webKnossos layers, in shard-aligned chunk jobs; see server/predictions/.

load (classifier, region) -> compute (chunks: fully convolutional, one view per cell) ->
record (layers, per-chunk summaries; the finish merges clusters into an NML and a report)."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.datasets.service import open_source
from server.db.base import write_transaction
from server.db.tables import Dataset, Job, ModelVersion
from server.db.vocabulary import VersionStatus
from server.errors import InvalidInput, NotFound
from server.jobs import state
from server.jobs.context import Chunked, StepContext
from server.jobs.kinds import JobKind
from server.jobs.params import PredictChunkParams, PredictParams
from server.pixels.reading import use_all_cores
from server.predictions import dense
from server.predictions.finish import finish_prediction
from server.predictions.plan import validate_params
from server.predictions.qc import parse_grid
from server.settings import Settings
from server.versions.service import active_model

log = logging.getLogger(__name__)


def check(settings: Settings, dataset: Dataset, params: dict[str, Any]) -> None:
    validate_params(dataset, params)


def run(ctx: StepContext, job: Job) -> Chunked:
    """Plan the map and cut it into chunk jobs. A retried job re-sends the chunks that are
    not done instead of planning anew."""
    params = PredictParams.of(job.params)
    dataset = ctx.dataset_of(job)
    with write_transaction(ctx.sessions) as session:
        if params.plan is not None:
            pending = state.requeue_unfinished_children(session, parent_id=job.id)
            return Chunked(
                result=dict(job.result or {}), children=pending, child_kind=JobKind.PREDICT_CHUNK
            )
        version = _classifier_for(
            session, dataset_id=dataset.id, version_id=params.model_version_id,
            hold_back=ctx.settings.hold_back_worse,
        )  # fmt: skip
        version_id = version.id
        config = version.config or {}  # dense maps are one view: its threshold, if recorded
        threshold = float(config.get("single_view_threshold", config.get("threshold", 0.5)))
    plan = dense.make_plan(
        dataset,
        job.params,
        out_root=ctx.settings.data_dir / "predictions" / f"job-{job.id}",
        threshold=threshold,
        field_grid=parse_grid(ctx.settings.qc_field_grid),
    )
    dense.create_output(plan, voxel_size=tuple(dataset.voxel_size))  # type: ignore[arg-type]
    blocks = dense.chunks(plan)
    with write_transaction(ctx.sessions) as session:
        children = [
            state.create_job(
                session,
                kind=JobKind.PREDICT_CHUNK,
                dataset_id=dataset.id,
                parent_id=job.id,
                params={"model_version_id": version_id, "chunk": i, "block": list(block)},
                requested_by="loop",
            ).id
            for i, block in enumerate(blocks)
        ]
        state.record_params(
            session,
            job_id=job.id,
            params={**job.params, "model_version_id": version_id, "plan": plan.to_dict()},
            message=f"predicting {len(blocks)} chunks",
        )
    return Chunked(
        result={"chunks": len(blocks), "output": plan.out_path, "model_version_id": version_id},
        children=children,
        child_kind=JobKind.PREDICT_CHUNK,
    )


def _classifier_for(
    session: Session, *, dataset_id: int, version_id: int | None, hold_back: bool = True
) -> ModelVersion:
    if version_id is None:
        version = active_model(
            session, dataset_id=dataset_id, kind="classifier", hold_back=hold_back
        )
        if version is None:
            raise InvalidInput("no classifier yet: label some patches and train first")
        return version
    version = session.get(ModelVersion, version_id)
    if version is None or version.dataset_id != dataset_id:
        raise NotFound(f"no model version {version_id} for this dataset")
    if (
        version.kind != "classifier"
        or version.status != VersionStatus.READY
        or not version.weights_path
    ):
        raise InvalidInput(f"model version {version_id} is not a ready classifier")
    return version


def run_chunk(ctx: StepContext, job: Job) -> dict[str, Any]:
    params = PredictChunkParams.of(job.params)
    dataset = ctx.dataset_of(job)
    with write_transaction(ctx.sessions) as session:
        parent = session.get(Job, job.parent_id) if job.parent_id is not None else None
        if parent is None or "plan" not in (parent.params or {}):
            raise NotFound(f"predict chunk {job.id} has no planned parent job")
        plan = dense.Plan.from_dict(parent.params["plan"])
        version = session.get(ModelVersion, params.model_version_id)
        if version is None or not version.weights_path:
            raise NotFound(f"model version {params.model_version_id} has no weights")
        weights = Path(version.weights_path)
    use_all_cores(ctx.settings)
    classifier, temperature = load_classifier(str(weights))
    block = tuple(params.block)
    truth = dense.ground_truth(dataset.path)
    x0, y0, z0, x1, y1, z1 = block
    blank = np.zeros((x1 - x0, y1 - y0, z1 - z0), dtype=bool)
    with open_source(dataset) as source:
        prob = dense.predict_block(
            source,
            classifier,
            plan=plan,
            block=block,  # type: ignore[arg-type]
            norm=(dataset.norm_mean, dataset.norm_std),
            temperature=temperature,
            blank=blank,
        )
    dense.write_block(plan, block, prob)  # type: ignore[arg-type]
    summary = dense.block_summary(plan, block, prob, truth, blank)  # type: ignore[arg-type]
    dense.save_summary(dense.chunk_file(plan, params.chunk), summary)
    return {"cells": summary["cells"], "artifact_cells": summary["artifact_cells"]}


def chunks_done(ctx: StepContext, job: Job) -> dict[str, Any]:
    """Every chunk is written: merge their clusters into the NML and write the report."""
    with write_transaction(ctx.sessions) as session:
        dataset = session.get(Dataset, job.dataset_id)
        if dataset is not None:
            session.expunge(dataset)
        chunks = len(list(session.scalars(select(Job.id).where(Job.parent_id == job.id))))
    plan = dense.Plan.from_dict(job.params["plan"])
    report = finish_prediction(plan, n_chunks=chunks, dataset=dataset, settings=ctx.settings)
    gt = report.get("ground_truth")
    summary = f"{report['clusters']} artifact clusters" + (
        f"; patch PR-AUC {gt['pr_auc']}" if gt and gt.get("pr_auc") is not None else ""
    )
    return {
        **report,
        "chunks": chunks,
        "model_version_id": job.params.get("model_version_id"),
        "summary": summary,
    }


@lru_cache(maxsize=2)
def load_classifier(path: str) -> tuple[Any, float]:
    """A classifier made ready for fast forward passes (BatchNorm folded, eval mode) and the
    temperature of one view's logits (a dense map runs one view per cell); cached per
    process, since the chunk jobs of a map use the same one."""
    # torch loads when a model runs, not where the API imports this step
    from models.checkpoint import load_checkpoint
    from models.networks import for_inference

    model, meta = load_checkpoint(Path(path))
    extra = meta["extra"]
    return for_inference(model), float(
        extra.get("single_view_temperature", extra.get("temperature", 1.0))
    )
