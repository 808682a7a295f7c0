"""The annotation loop: what each job does and what follows it.

pretrain -> score (AE, cold start) -> propose (+ audit set, once)
labels arrive -> train (after N new labels or on request; coalesced) -> score -> propose

Workers call :func:`run_job_handler` and, on success, :func:`after_job`. Per-patch scores of a
scoring run live in chunk files in the model store; the database only gets the proposals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from server.annotation.proposals import ensure_audit_set, excluded_indices, replace_proposals
from server.datasets.service import grid_of, open_source
from server.db.base import utcnow, write_transaction
from server.db.tables import AnnotationTask, Dataset, Job, Label, ModelVersion
from server.errors import InvalidInput, NotFound
from server.jobs import state as jobs
from server.jobs.queue import JobSender
from server.runtime import Runtime
from server.versions.service import active_model, model_dir, refresh_active_flags

log = logging.getLogger(__name__)

SCORE_CHUNK_PATCHES = 2048
DETACHED = "_detached"  # a handler result key: the job finishes when its chunk jobs do


# -- entry points used by the API ---------------------------------------------------------------
def dataset_registered(
    session: Session, *, sender: JobSender, dataset: Dataset, requested_by: str | None
) -> Job:
    """Registering a dataset starts autoencoder pretraining."""
    return jobs.start_job(
        session,
        sender=sender,
        kind="pretrain",
        dataset_id=dataset.id,
        params={},
        requested_by=requested_by,
    ).job


def labels_added(
    *,
    session_factory: sessionmaker[Session],
    sender: JobSender,
    dataset_id: int,
    retrain_every: int,
) -> Job | None:
    """Start retraining once ``retrain_every`` labels arrived since the last training."""
    every = retrain_every
    with write_transaction(session_factory) as session:
        if active_model(session, dataset_id=dataset_id, kind="ae") is None:
            return None  # nothing to fine-tune from yet
        active = jobs.active_jobs(session, dataset_id=dataset_id, kinds=("train",))
        queued = [j for j in active if j.state == "queued"]
        if queued:
            return queued[0]  # coalesce
        if active:
            # a training is running: when it ends, after_job counts what arrived meanwhile
            return None
        last = session.scalar(
            select(func.max(ModelVersion.label_snapshot_id)).where(
                ModelVersion.dataset_id == dataset_id,
                ModelVersion.kind == "classifier",
                ModelVersion.status.in_(("ready", "training")),
            )
        )
        new = session.scalar(
            select(func.count(Label.id)).where(
                Label.dataset_id == dataset_id, Label.id > (last or 0)
            )
        )
        if (new or 0) < every:
            return None
        return jobs.start_job(
            session,
            sender=sender,
            kind="train",
            dataset_id=dataset_id,
            params={"trigger": f"{new} new labels"},
            requested_by="loop",
        ).job


# -- training data ---------------------------------------------------------------------------------
def training_labels(session: Session, *, dataset: Dataset) -> list[Label]:
    """Labels for training: everything except labels of audit patches. Where annotators
    disagree on a position, the latest verdict counts."""
    audit = select(AnnotationTask.id).where(
        AnnotationTask.dataset_id == dataset.id, AnnotationTask.kind == "audit"
    )
    audit_positions = set(
        session.execute(
            select(AnnotationTask.x, AnnotationTask.y, AnnotationTask.z).where(
                AnnotationTask.dataset_id == dataset.id, AnnotationTask.kind == "audit"
            )
        ).all()
    )
    rows = session.scalars(
        select(Label)
        .where(
            Label.dataset_id == dataset.id,
            (Label.task_id.is_(None)) | (Label.task_id.not_in(audit)),
        )
        .order_by(Label.id)
    )
    latest: dict[tuple[int, int, int, int, int], Label] = {}
    for label in rows:
        if (label.x, label.y, label.z) in audit_positions:
            continue
        latest[(label.x, label.y, label.z, label.w, label.h)] = label
    return list(latest.values())


def audit_labels(session: Session, *, dataset: Dataset) -> list[Label]:
    """The latest label of every labelled audit patch."""
    positions = {
        (x, y, z)
        for x, y, z in session.execute(
            select(AnnotationTask.x, AnnotationTask.y, AnnotationTask.z).where(
                AnnotationTask.dataset_id == dataset.id, AnnotationTask.kind == "audit"
            )
        ).all()
    }
    latest: dict[tuple[int, int, int], Label] = {}
    for label in session.scalars(
        select(Label).where(Label.dataset_id == dataset.id).order_by(Label.id)
    ):
        key = (label.x, label.y, label.z)
        if key in positions:
            latest[key] = label
    return list(latest.values())


# -- job handlers ----------------------------------------------------------------------------------
Handler = Callable[[Runtime, Job, JobSender], dict[str, Any]]


def run_job_handler(rt: Runtime, job: Job, sender: JobSender) -> dict[str, Any]:
    handler = HANDLERS.get(job.kind)
    if handler is None:
        raise InvalidInput(f"jobs of kind {job.kind!r} are not supported yet")
    return handler(rt, job, sender)


def progress_reporter(rt: Runtime, job_id: int) -> Callable[[float, str], None]:
    def report(fraction: float, message: str) -> None:
        jobs.report_progress(rt.sessions, job_id=job_id, progress=fraction, message=message)

    return report


def _load_dataset(rt: Runtime, job: Job) -> Dataset:
    if job.dataset_id is None:
        raise InvalidInput(f"job {job.id} has no dataset")
    with write_transaction(rt.sessions) as session:
        dataset = session.get(Dataset, job.dataset_id)
        if dataset is None:
            raise NotFound(f"dataset {job.dataset_id} no longer exists")
        session.expunge(dataset)
        return dataset


def handle_pretrain(rt: Runtime, job: Job, sender: JobSender) -> dict[str, Any]:
    from server.pipeline import modeling

    dataset = _load_dataset(rt, job)
    grid = grid_of(dataset)
    report = progress_reporter(rt, job.id)
    with write_transaction(rt.sessions) as session:
        version = ModelVersion(
            dataset_id=dataset.id, kind="ae", status="training", job_id=job.id, config={}
        )
        session.add(version)
        session.flush()
        version_id = version.id
    try:
        with open_source(dataset) as source:
            outcome = modeling.pretrain_autoencoder(
                source=source,
                grid=grid,
                dataset=dataset,
                out_dir=model_dir(rt.settings, dataset_id=dataset.id, version_id=version_id),
                settings=rt.settings,
                params=job.params,
                progress=report,
            )
    except BaseException:
        _mark_version_failed(rt, version_id)
        raise
    with write_transaction(rt.sessions) as session:
        version = session.get(ModelVersion, version_id)
        assert version is not None
        version.status = "ready"
        version.config = outcome.config
        version.metrics = outcome.metrics
        version.weights_path = str(outcome.weights_path)
        version.weights_sha256 = outcome.weights_sha256
        refresh_active_flags(session, dataset_id=dataset.id)
    return {"model_version_id": version_id, "metrics": outcome.metrics}


def handle_train(rt: Runtime, job: Job, sender: JobSender) -> dict[str, Any]:
    from server.pipeline import modeling

    dataset = _load_dataset(rt, job)
    report = progress_reporter(rt, job.id)
    with write_transaction(rt.sessions) as session:
        ae = active_model(session, dataset_id=dataset.id, kind="ae")
        if ae is None:
            raise InvalidInput("no autoencoder yet: pretrain first")
        train = training_labels(session, dataset=dataset)
        audit = audit_labels(session, dataset=dataset)
        snapshot_id = (
            session.scalar(select(func.max(Label.id)).where(Label.dataset_id == dataset.id)) or 0
        )
        for label in (*train, *audit):
            session.expunge(label)
        ae_id, ae_path = ae.id, ae.weights_path
    if len({lab.label for lab in train}) < 2:
        raise InvalidInput(
            f"need labels of both classes to train ({len(train)} training labels so far)"
        )
    with write_transaction(rt.sessions) as session:
        version = ModelVersion(
            dataset_id=dataset.id,
            kind="classifier",
            parent_id=ae_id,
            status="training",
            job_id=job.id,
            label_count=len(train),
            label_snapshot_id=snapshot_id,
            config={},
        )
        session.add(version)
        session.flush()
        version_id = version.id
    try:
        with open_source(dataset) as source:
            outcome = modeling.train_classifier(
                source=source,
                dataset=dataset,
                ae_weights=Path(str(ae_path)),
                train_labels=train,
                audit_labels=audit,
                out_dir=model_dir(rt.settings, dataset_id=dataset.id, version_id=version_id),
                settings=rt.settings,
                params=job.params,
                progress=report,
                snapshot_id=snapshot_id,
            )
    except BaseException:
        _mark_version_failed(rt, version_id)
        raise
    with write_transaction(rt.sessions) as session:
        version = session.get(ModelVersion, version_id)
        assert version is not None
        version.status = "ready"
        version.config = outcome.config
        version.metrics = outcome.metrics
        version.weights_path = str(outcome.weights_path)
        version.weights_sha256 = outcome.weights_sha256
        refresh_active_flags(session, dataset_id=dataset.id)
    return {"model_version_id": version_id, "metrics": outcome.metrics}


def _mark_version_failed(rt: Runtime, version_id: int) -> None:
    with write_transaction(rt.sessions) as session:
        session.execute(
            update(ModelVersion).where(ModelVersion.id == version_id).values(status="failed")
        )


def handle_score(rt: Runtime, job: Job, sender: JobSender) -> dict[str, Any]:
    """Cut the pool into chunks that run as independent jobs on any gpu worker."""
    dataset = _load_dataset(rt, job)
    grid = grid_of(dataset)
    with write_transaction(rt.sessions) as session:
        version_id = job.params.get("model_version_id")
        if version_id is None:
            chosen = active_model(
                session, dataset_id=dataset.id, kind="classifier"
            ) or active_model(session, dataset_id=dataset.id, kind="ae")
            if chosen is None:
                raise InvalidInput("no model to score with: pretrain first")
            version_id = chosen.id
        elif session.get(ModelVersion, int(version_id)) is None:
            raise NotFound(f"no model version {version_id}")
    chunk = int(job.params.get("chunk_patches", SCORE_CHUNK_PATCHES))
    bounds = [(start, min(start + chunk, len(grid))) for start in range(0, len(grid), chunk)]
    with write_transaction(rt.sessions) as session:
        children = [
            jobs.create_job(
                session,
                kind="score_chunk",
                dataset_id=dataset.id,
                parent_id=job.id,
                params={
                    "model_version_id": int(version_id),
                    "start": start,
                    "stop": stop,
                    "chunk": i,
                },
                requested_by="loop",
            )
            for i, (start, stop) in enumerate(bounds)
        ]
        job_row = session.get(Job, job.id)
        assert job_row is not None
        job_row.params = {**job.params, "model_version_id": int(version_id), "chunks": len(bounds)}
        job_row.message = f"scoring {len(grid):,} patches in {len(bounds)} chunks"
        child_ids = [c.id for c in children]
    for child_id in child_ids:
        sender.send(job_id=child_id, kind="score_chunk")
    return {DETACHED: True, "chunks": len(bounds), "model_version_id": int(version_id)}


def handle_score_chunk(rt: Runtime, job: Job, sender: JobSender) -> dict[str, Any]:
    from server.pipeline import modeling

    dataset = _load_dataset(rt, job)
    grid = grid_of(dataset)
    with write_transaction(rt.sessions) as session:
        version = session.get(ModelVersion, int(job.params["model_version_id"]))
        if version is None or version.weights_path is None:
            raise NotFound(f"model version {job.params['model_version_id']} has no weights")
        ae_path = version.weights_path
        if version.kind == "classifier" and version.parent_id is not None:
            parent = session.get(ModelVersion, version.parent_id)
            ae_path = parent.weights_path if parent is not None else None
        weights, kind = version.weights_path, version.kind
    out = (
        model_dir(
            rt.settings, dataset_id=dataset.id, version_id=int(job.params["model_version_id"])
        )
        / "scores"
    )
    out.mkdir(exist_ok=True)
    with open_source(dataset) as source:
        summary = modeling.score_chunk(
            source=source,
            grid=grid,
            dataset=dataset,
            start=int(job.params["start"]),
            stop=int(job.params["stop"]),
            weights=Path(weights),
            ae_weights=Path(ae_path) if ae_path else None,
            kind=kind,
            out_file=out / f"chunk-{int(job.params['chunk']):06d}.npz",
            settings=rt.settings,
            progress=progress_reporter(rt, job.id),
        )
    return summary


def handle_propose(rt: Runtime, job: Job, sender: JobSender) -> dict[str, Any]:
    from server.pipeline import modeling

    dataset = _load_dataset(rt, job)
    grid = grid_of(dataset)
    version_id = int(job.params["model_version_id"])
    scores_dir = model_dir(rt.settings, dataset_id=dataset.id, version_id=version_id) / "scores"
    with write_transaction(rt.sessions) as session:
        version = session.get(ModelVersion, version_id)
        if version is None:
            raise NotFound(f"no model version {version_id}")
        ds = session.get(Dataset, dataset.id)
        assert ds is not None
        audit_count = ensure_audit_set(session, dataset=ds, grid=grid, size=rt.settings.audit_size)
        excluded = excluded_indices(session, dataset=ds, grid=grid)
        picks = modeling.propose_batch(
            scores_dir=scores_dir,
            kind=version.kind,
            excluded=excluded,
            batch_size=int(job.params.get("batch_size", rt.settings.batch_size)),
            seed=job.id,
        )
        added = replace_proposals(
            session, dataset=ds, grid=grid, model_version_id=version_id, job_id=job.id, picks=picks
        )
    return {"proposed": added, "audit_set": audit_count, "model_version_id": version_id}


def _classifier_for(session: Session, *, dataset_id: int, params: dict[str, Any]) -> ModelVersion:
    version_id = params.get("model_version_id")
    if version_id is None:
        version = active_model(session, dataset_id=dataset_id, kind="classifier")
        if version is None:
            raise InvalidInput("no classifier yet: label some patches and train first")
        return version
    version = session.get(ModelVersion, int(version_id))
    if version is None or version.dataset_id != dataset_id:
        raise NotFound(f"no model version {version_id} for this dataset")
    if version.kind != "classifier" or version.status != "ready" or not version.weights_path:
        raise InvalidInput(f"model version {version_id} is not a ready classifier")
    return version


def handle_predict(rt: Runtime, job: Job, sender: JobSender) -> dict[str, Any]:
    """Plan a dense prediction and cut it into shard-aligned chunk jobs (see server.predictions.dense).

    A retried predict job re-sends the chunks that are not done instead of planning anew."""
    from server.predictions import dense as predict

    dataset = _load_dataset(rt, job)
    with write_transaction(rt.sessions) as session:
        existing = list(session.scalars(select(Job).where(Job.parent_id == job.id)))
        if existing:
            pending = [c.id for c in existing if c.state in ("queued", "failed", "cancelled")]
            for child in existing:
                if child.state in ("failed", "cancelled"):
                    child.state, child.error, child.attempts = "queued", None, 0
            plan_dict = dict(job.params["plan"])
    if existing:
        for child_id in pending:
            sender.send(job_id=child_id, kind="predict_chunk")
        return {DETACHED: True, "chunks": len(existing), "output": plan_dict["out_path"]}

    with write_transaction(rt.sessions) as session:
        version = _classifier_for(session, dataset_id=dataset.id, params=job.params)
        version_id = version.id
        config = version.config or {}  # dense maps are one view: its threshold, if recorded
        threshold = float(config.get("single_view_threshold", config.get("threshold", 0.5)))
    plan = predict.make_plan(
        dataset,
        job.params,
        out_root=rt.settings.data_dir / "predictions" / f"job-{job.id}",
        threshold=threshold,
    )
    predict.create_output(plan, voxel_size=tuple(dataset.voxel_size))  # type: ignore[arg-type]
    blocks = predict.chunks(plan)
    with write_transaction(rt.sessions) as session:
        children = [
            jobs.create_job(
                session,
                kind="predict_chunk",
                dataset_id=dataset.id,
                parent_id=job.id,
                params={"model_version_id": version_id, "chunk": i, "block": list(block)},
                requested_by="loop",
            )
            for i, block in enumerate(blocks)
        ]
        job_row = session.get(Job, job.id)
        assert job_row is not None
        job_row.params = {**job.params, "model_version_id": version_id, "plan": plan.to_dict()}
        job_row.message = f"predicting {len(blocks)} chunks"
        child_ids = [c.id for c in children]
    for child_id in child_ids:
        sender.send(job_id=child_id, kind="predict_chunk")
    return {DETACHED: True, "chunks": len(blocks), "output": plan.out_path}


def handle_predict_chunk(rt: Runtime, job: Job, sender: JobSender) -> dict[str, Any]:
    from server.pipeline import modeling
    from server.predictions import dense as predict

    dataset = _load_dataset(rt, job)
    with write_transaction(rt.sessions) as session:
        parent = session.get(Job, job.parent_id) if job.parent_id is not None else None
        if parent is None or "plan" not in (parent.params or {}):
            raise NotFound(f"predict chunk {job.id} has no planned parent job")
        plan = predict.Plan.from_dict(parent.params["plan"])
        version = session.get(ModelVersion, int(job.params["model_version_id"]))
        if version is None or not version.weights_path:
            raise NotFound(f"model version {job.params['model_version_id']} has no weights")
        weights = Path(version.weights_path)
    classifier, temperature = modeling.load_classifier(weights, settings=rt.settings)
    block = tuple(int(v) for v in job.params["block"])
    truth = predict.ground_truth(dataset.path)
    with open_source(dataset) as source:
        prob = predict.predict_block(
            source,
            classifier,
            plan=plan,
            block=block,  # type: ignore[arg-type]
            norm=(dataset.norm_mean, dataset.norm_std),
            temperature=temperature,
        )
    predict.write_block(plan, block, prob)  # type: ignore[arg-type]
    summary = predict.block_summary(plan, block, prob, truth)  # type: ignore[arg-type]
    predict.save_summary(predict.chunk_file(plan, int(job.params["chunk"])), summary)
    return {"cells": summary["cells"], "artifact_cells": summary["artifact_cells"]}


def handle_sync(rt: Runtime, job: Job, sender: JobSender) -> dict[str, Any]:
    """Push proposals to webKnossos, import finished annotations, cancel answered tasks."""
    from server.webknossos import sync as wk_sync

    dataset = _load_dataset(rt, job)
    report = wk_sync.sync(rt.sessions, rt.settings, dataset, job.params)
    if report.labels_added:
        labels_added(
            session_factory=rt.sessions,
            sender=sender,
            dataset_id=dataset.id,
            retrain_every=rt.settings.retrain_every,
        )
    if report.errors:
        # what could be imported is kept (one transaction per annotation); say what was not
        raise InvalidInput(
            f"{len(report.errors)} annotation(s) not imported: " + "; ".join(report.errors)
        )
    return report.to_dict()


HANDLERS: dict[str, Handler] = {
    "pretrain": handle_pretrain,
    "train": handle_train,
    "score": handle_score,
    "score_chunk": handle_score_chunk,
    "propose": handle_propose,
    "predict": handle_predict,
    "predict_chunk": handle_predict_chunk,
    "sync": handle_sync,
}


# -- what follows a job -----------------------------------------------------------------------------
def after_job(rt: Runtime, *, job_id: int, sender: JobSender) -> None:
    """Chain the loop: a new model is scored; a finished scoring run proposes a batch."""
    with write_transaction(rt.sessions) as session:
        job = session.get(Job, job_id)
        if job is None or job.state != "succeeded":
            return
        result = job.result or {}
        if job.kind in ("pretrain", "train") and "model_version_id" in result:
            jobs.start_job(
                session,
                sender=sender,
                kind="score",
                dataset_id=job.dataset_id,
                params={"model_version_id": result["model_version_id"]},
                requested_by="loop",
            )
        elif job.kind in ("score_chunk", "predict_chunk") and job.parent_id is not None:
            _chunk_finished(rt, session, sender=sender, parent_id=job.parent_id)
        elif job.kind == "propose" and job.dataset_id is not None:
            _push_to_webknossos(session, sender=sender, dataset_id=job.dataset_id)
    if job is not None and job.kind == "train" and job.dataset_id is not None:
        # labels that arrived during training may already justify the next round
        labels_added(
            session_factory=rt.sessions,
            sender=sender,
            dataset_id=job.dataset_id,
            retrain_every=rt.settings.retrain_every,
        )


def periodic_sync(rt: Runtime, sender: JobSender) -> list[int]:
    """A sync job for every dataset linked to webKnossos that has none waiting or running."""
    from server.webknossos.sync import link_of

    if not rt.settings.wk_url or rt.settings.wk_token is None:
        return []
    with write_transaction(rt.sessions) as session:
        started = [
            _start_sync(session, sender=sender, dataset_id=dataset.id, requested_by="schedule")
            for dataset in session.scalars(select(Dataset))
            if link_of(dataset) is not None
        ]
    return [job_id for job_id in started if job_id is not None]


def _push_to_webknossos(session: Session, *, sender: JobSender, dataset_id: int) -> None:
    """New proposals of a dataset that pushes tasks to webKnossos go there at once."""
    from server.webknossos.sync import link_of

    dataset = session.get(Dataset, dataset_id)
    link = link_of(dataset) if dataset is not None else None
    if link is not None and link.get("push"):
        _start_sync(session, sender=sender, dataset_id=dataset_id, requested_by="loop")


def _start_sync(
    session: Session, *, sender: JobSender, dataset_id: int, requested_by: str
) -> int | None:
    """Start a sync of the dataset unless one is waiting or running; the new job's id."""
    if jobs.active_jobs(session, dataset_id=dataset_id, kinds=("sync",)):
        return None
    return jobs.start_job(
        session, sender=sender, kind="sync", dataset_id=dataset_id, requested_by=requested_by
    ).job.id


def _chunk_finished(rt: Runtime, session: Session, *, sender: JobSender, parent_id: int) -> None:
    parent = (
        session.scalar(select(Job).where(Job.id == parent_id).with_for_update())
        if _is_pg(session)
        else session.get(Job, parent_id)
    )
    if parent is None or parent.state != "running":
        return
    states = dict(
        session.execute(
            select(Job.state, func.count(Job.id))
            .where(Job.parent_id == parent_id)
            .group_by(Job.state)
        ).all()
    )
    total = sum(states.values())
    done = states.get("succeeded", 0)
    parent.progress = done / max(total, 1)
    verb, finish = _CHUNKED[parent.kind]
    parent.message = f"{done} of {total} chunks {verb}"
    parent.heartbeat_at = utcnow()
    if done < total:
        return
    finish(rt, session, sender, parent, total)


def _score_finished(
    rt: Runtime, session: Session, sender: JobSender, parent: Job, chunks: int
) -> None:
    """All chunks are scored: the version proposes the next batch."""
    parent.state = "succeeded"
    parent.finished_at = utcnow()
    parent.result = {"chunks": chunks, "model_version_id": parent.params.get("model_version_id")}
    session.flush()
    jobs.start_job(
        session,
        sender=sender,
        kind="propose",
        dataset_id=parent.dataset_id,
        params={"model_version_id": parent.params.get("model_version_id")},
        requested_by="loop",
    )


def _predict_finished(
    rt: Runtime, session: Session, sender: JobSender, parent: Job, chunks: int
) -> None:
    """All chunks are written: merge their clusters into the NML and write the report."""
    from server.predictions import dense as predict

    dataset = session.get(Dataset, parent.dataset_id)
    plan = predict.Plan.from_dict(parent.params["plan"])
    try:
        from server.predictions.finish import finish_prediction

        report = finish_prediction(plan, n_chunks=chunks, dataset=dataset, settings=rt.settings)
    except Exception as exc:  # a missing or unreadable chunk summary
        log.exception("finishing predict job %s failed", parent.id)
        parent.state, parent.error = "failed", f"{type(exc).__name__}: {exc}"
        parent.finished_at = utcnow()
        return
    parent.state = "succeeded"
    parent.finished_at = utcnow()
    parent.progress = 1.0
    parent.result = {
        **report,
        "chunks": chunks,
        "model_version_id": parent.params.get("model_version_id"),
    }
    gt = report.get("ground_truth")
    parent.message = f"{report['clusters']} artifact clusters" + (
        f"; patch PR-AUC {gt['pr_auc']}" if gt and gt.get("pr_auc") is not None else ""
    )


# parent kind -> (what its chunks do, what happens when all are done)
_CHUNKED: dict[str, tuple[str, Callable[[Runtime, Session, JobSender, Job, int], None]]] = {
    "score": ("scored", _score_finished),
    "predict": ("predicted", _predict_finished),
}


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
