"""What the loop decides: when a training starts, what follows each step, which patches
may be proposed or scored. Each test runs on PostgreSQL inside a rolled-back transaction."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.acquisition import registry
from server.annotation.proposals import ensure_audit_set, excluded_indices
from server.datasets.service import grid_of
from server.db.tables import AnnotationTask, Job
from server.jobs import state
from server.jobs.context import StepContext
from server.jobs.kinds import JobKind, JobState
from server.labels.service import labels_arrived
from server.labels.training_set import audit_labels, training_labels
from server.pipeline import audit, pretrain, score, train
from tests import factories as make

pytestmark = pytest.mark.postgres


def _jobs(session: Session, kind: JobKind) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.kind == kind).order_by(Job.id)))


def _succeeded(session: Session, ds_id: int, kind: JobKind, result: dict) -> Job:  # type: ignore[type-arg]
    job = Job(kind=kind, dataset_id=ds_id, state=JobState.SUCCEEDED, params={}, result=result)
    session.add(job)
    session.commit()
    return job


def test_no_training_without_an_autoencoder(ctx: StepContext, session: Session) -> None:
    ds = make.dataset(session)
    for i in range(5):
        make.label(session, ds, x=140 * (i % 4))
    session.commit()
    assert labels_arrived(ctx.rt, ctx.sender, dataset_id=ds.id) is None
    assert ctx.sender.pending == []


def test_enough_new_labels_start_one_training_and_later_triggers_coalesce(
    ctx: StepContext, session: Session
) -> None:
    ds = make.dataset(session)
    make.version(session, ds)
    make.label(session, ds)
    make.label(session, ds, x=140)
    session.commit()
    assert labels_arrived(ctx.rt, ctx.sender, dataset_id=ds.id) is None, "2 < retrain_every 3"
    make.label(session, ds, x=280)
    session.commit()
    first = labels_arrived(ctx.rt, ctx.sender, dataset_id=ds.id)
    assert first is not None and first.kind == "train" and first.requested_by == "loop"
    make.label(session, ds, x=420)
    session.commit()
    again = labels_arrived(ctx.rt, ctx.sender, dataset_id=ds.id)
    assert again is not None and again.id == first.id, "a waiting training absorbs new labels"
    assert ctx.sender.pending == [first.id], "sent once"
    job = session.get(Job, first.id)
    assert job is not None
    job.state = JobState.RUNNING
    session.commit()
    assert labels_arrived(ctx.rt, ctx.sender, dataset_id=ds.id) is None, "one at a time"


def test_labels_a_version_was_trained_on_do_not_count_again(
    ctx: StepContext, session: Session
) -> None:
    ds = make.dataset(session)
    ae = make.version(session, ds)
    seen = [make.label(session, ds, x=140 * i) for i in range(4)]
    make.version(session, ds, kind="classifier", parent_id=ae.id, label_snapshot_id=seen[-1].id)
    make.label(session, ds, y=140)
    session.commit()
    assert labels_arrived(ctx.rt, ctx.sender, dataset_id=ds.id) is None, "1 new label"


def test_a_training_skipped_for_one_class_does_not_retrigger_on_the_same_labels(
    ctx: StepContext, session: Session
) -> None:
    ds = make.dataset(session)
    make.version(session, ds)
    seen = [make.label(session, ds, x=140 * i) for i in range(4)]
    _succeeded(session, ds.id, JobKind.TRAIN, {"skipped": "one class", "snapshot_id": seen[-1].id})
    assert labels_arrived(ctx.rt, ctx.sender, dataset_id=ds.id) is None


def test_labels_that_waited_for_the_autoencoder_start_a_training_once_it_is_ready(
    ctx: StepContext, session: Session
) -> None:
    ds = make.dataset(session)
    for i in range(4):  # imported before there was an autoencoder: nothing to train from
        make.label(session, ds, x=140 * i)
    session.commit()
    assert labels_arrived(ctx.rt, ctx.sender, dataset_id=ds.id) is None
    ae = make.version(session, ds)
    session.commit()
    pretrain.after(ctx, _succeeded(session, ds.id, JobKind.PRETRAIN, {"model_version_id": ae.id}))
    (training,) = _jobs(session, JobKind.TRAIN)
    assert training.params["trigger"] == "4 new labels"


def test_audit_labels_alone_start_no_training_once_the_autoencoder_is_ready(
    ctx: StepContext, session: Session
) -> None:
    ds = make.dataset(session)
    grid = grid_of(ds)
    ensure_audit_set(session, dataset=ds, grid=grid, size=4)
    for task in session.scalars(select(AnnotationTask).where(AnnotationTask.kind == "audit")):
        make.label(session, ds, x=task.x, y=task.y, z=task.z, task_id=task.id)
    ae = make.version(session, ds)
    session.commit()
    assert training_labels(session, dataset=ds) == [] and audit_labels(session, dataset=ds)
    pretrain.after(ctx, _succeeded(session, ds.id, JobKind.PRETRAIN, {"model_version_id": ae.id}))
    assert _jobs(session, JobKind.TRAIN) == [], "audit labels never train"


def test_a_measurement_that_changes_the_active_classifier_scores_the_pool_with_it(
    ctx: StepContext, session: Session
) -> None:
    ds = make.dataset(session)
    audit.after(
        ctx, _succeeded(session, ds.id, JobKind.AUDIT, {"active_before": 3, "active_after": 3})
    )
    assert _jobs(session, JobKind.SCORE) == [], "the same version: nothing to redo"
    ae = make.version(session, ds)
    clf = make.version(session, ds, kind="classifier", parent_id=ae.id)
    session.commit()
    result = {"active_before": None, "active_after": clf.id}
    audit.after(ctx, _succeeded(session, ds.id, JobKind.AUDIT, result))
    (scored,) = _jobs(session, JobKind.SCORE)
    assert scored.params["model_version_id"] == clf.id


def test_what_follows_each_step(ctx: StepContext, session: Session) -> None:
    ds = make.dataset(session)
    ae = make.version(session, ds)
    clf = make.version(session, ds, kind="classifier", parent_id=ae.id)
    session.commit()
    pretrain.after(ctx, _succeeded(session, ds.id, JobKind.PRETRAIN, {"model_version_id": ae.id}))
    (scored,) = _jobs(session, JobKind.SCORE)
    assert scored.params["model_version_id"] == ae.id, "a new autoencoder computes its features"
    train.after(ctx, _succeeded(session, ds.id, JobKind.TRAIN, {"model_version_id": clf.id}))
    assert [j.params["model_version_id"] for j in _jobs(session, JobKind.SCORE)] == [ae.id, clf.id]
    score.after(ctx, _succeeded(session, ds.id, JobKind.SCORE, {"model_version_id": clf.id}))
    (proposed,) = _jobs(session, JobKind.PROPOSE)
    assert proposed.params["model_version_id"] == clf.id
    # a training that only saw one class: more proposals from the autoencoder
    train.after(ctx, _succeeded(session, ds.id, JobKind.TRAIN, {"skipped": "one class"}))
    assert [j.params["model_version_id"] for j in _jobs(session, JobKind.PROPOSE)] == [
        clf.id,
        ae.id,
    ]


def test_strategies_without_classifier_scores_propose_right_after_training(
    ctx: StepContext, session: Session
) -> None:
    ctx.rt.settings.acquisition = "random"
    ds = make.dataset(session)
    ae = make.version(session, ds)
    clf = make.version(session, ds, kind="classifier", parent_id=ae.id)
    train.after(ctx, _succeeded(session, ds.id, JobKind.TRAIN, {"model_version_id": clf.id}))
    assert _jobs(session, JobKind.SCORE) == []
    assert [j.params["model_version_id"] for j in _jobs(session, JobKind.PROPOSE)] == [clf.id]


def test_audit_set_is_drawn_once_and_never_trained_on(session: Session) -> None:
    ds = make.dataset(session)
    grid = grid_of(ds)
    assert ensure_audit_set(session, dataset=ds, grid=grid, size=4) == 4
    assert ensure_audit_set(session, dataset=ds, grid=grid, size=10) == 4, "drawn once"

    audit = list(session.scalars(select(AnnotationTask).where(AnnotationTask.kind == "audit")))
    a = audit[0]
    make.label(session, ds, x=a.x, y=a.y, z=a.z, label="clean")
    make.label(session, ds, x=a.x, y=a.y, z=a.z, label="artifact")  # a second opinion
    free = next(i for i in range(len(grid)) if i not in {t.grid_index for t in audit})
    origin = grid.origins(np.asarray([free]))[0]
    make.label(session, ds, x=int(origin[0]), y=int(origin[1]), z=int(origin[2]))
    assert [(lab.x, lab.y, lab.z) for lab in training_labels(session, dataset=ds)] == [
        tuple(int(v) for v in origin)
    ]
    (latest,) = audit_labels(session, dataset=ds)
    assert latest.label == "artifact", "the latest verdict on an audit patch counts"


def test_audit_labelled_and_leased_patches_are_never_proposed_or_scored(
    ctx: StepContext, session: Session
) -> None:
    ds = make.dataset(session)
    grid = grid_of(ds)
    ensure_audit_set(session, dataset=ds, grid=grid, size=4)
    someone = make.annotator(session)
    make.task(session, ds, grid_index=5, status="leased", lease_holder_id=someone.id)
    make.task(session, ds, grid_index=6, status="open")  # open: may be proposed again
    origin = grid.origins(np.asarray([7]))[0]
    make.label(session, ds, x=int(origin[0]) + 20, y=int(origin[1]), z=int(origin[2]))
    excluded = set(excluded_indices(session, dataset=ds, grid=grid).tolist())
    from server.db.tables import AnnotationTask

    audit = {
        t.grid_index
        for t in session.scalars(select(AnnotationTask).where(AnnotationTask.kind == "audit"))
    }
    assert audit | {5, 7} == excluded, "audit, leased and (mostly) labelled patches"
    ctx.rt.settings.candidates = 5
    version = make.version(session, ds, kind="classifier")
    session.commit()
    cands = _hybrid_candidates(
        ctx, version=version.id, job_id=1, n=len(grid), excluded=np.asarray(sorted(excluded))
    )
    assert len(cands) == 5 and not set(cands.tolist()) & excluded
    assert list(cands) == sorted(cands), "storage order"


def test_a_chunked_job_finishes_once(ctx: StepContext, session: Session) -> None:
    ds = make.dataset(session)
    parent = state.create_job(session, kind=JobKind.SCORE, dataset_id=ds.id)
    parent.state = JobState.RUNNING
    children = [
        state.create_job(
            session,
            kind=JobKind.SCORE_CHUNK,
            dataset_id=ds.id,
            parent_id=parent.id,
            params={"model_version_id": 1, "chunk": c, "start": 0, "stop": 1},
        )
        for c in range(2)
    ]
    session.commit()
    children[0].state = JobState.SUCCEEDED
    session.commit()
    assert state.claim_parent_finish(ctx.sessions, parent_id=parent.id) is None, "one to go"
    children[1].state = JobState.SUCCEEDED
    session.commit()
    won = state.claim_parent_finish(ctx.sessions, parent_id=parent.id)
    assert won is not None and won.id == parent.id
    assert state.claim_parent_finish(ctx.sessions, parent_id=parent.id) is None, "only once"


def _hybrid_candidates(ctx: StepContext, **where: Any) -> np.ndarray:
    """The candidate set the score step asks of the default strategy."""
    return registry.get("hybrid").candidate_set(score.scoring_inputs(ctx, **where))


def test_a_bounded_candidate_set_mixes_previous_uncertain_anomalous_near_and_fresh_patches(
    ctx: StepContext, session: Session
) -> None:
    from server.versions.features import AEFeatures, features_dir, scores_dir, write_scores

    n = 20_000
    ds = make.dataset(session)
    ae = make.version(session, ds, kind="ae")
    before = make.version(session, ds, kind="classifier", parent_id=ae.id)
    now = make.version(session, ds, kind="classifier", parent_id=ae.id)
    session.commit()
    settings = ctx.rt.settings
    features = AEFeatures(features_dir(settings, dataset_id=ds.id, version_id=ae.id))
    features.plan(patches=n, chunk_patches=5_000)
    recon = np.zeros(n, np.float32)
    anomalous = np.arange(100, 20_000, 200)  # 100 patches the autoencoder finds odd
    recon[anomalous] = 9.0
    embedding = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float16)
    artifact = 17  # labelled artifact; 40 patches far from it look just like it
    look_alike = np.arange(12_001, 12_401, 10)
    embedding[[artifact, *look_alike]] = np.eye(8)[0] * 3 + embedding[look_alike[0]] * 0.05
    origin = grid_of(ds).origins(artifact)[0]
    make.label(session, ds, x=int(origin[0]), y=int(origin[1]), z=int(origin[2]), label="artifact")
    session.commit()
    for c in range(4):
        part = slice(c * 5_000, (c + 1) * 5_000)
        features.write_chunk(c, recon=recon[part], embedding=embedding[part])
    previous = scores_dir(settings, dataset_id=ds.id, version_id=before.id)
    previous.mkdir(parents=True)
    scored = np.arange(0, 20_000, 7)
    margin = np.zeros(len(scored), np.float32)
    margin[:300] = 0.99  # its 300 most uncertain candidates
    write_scores(previous / "chunk-000000.npz", index=scored, uncertainty=margin)
    excluded = np.asarray([scored[0], anomalous[0], 3, artifact])  # labelled: never again
    settings.candidates = 2_000
    got = _hybrid_candidates(ctx, version=now.id, job_id=9, n=n, excluded=excluded)
    again = _hybrid_candidates(ctx, version=now.id, job_id=9, n=n, excluded=excluded)
    assert np.array_equal(got, again), "the same job draws the same set"
    assert len(got) == 2_000 and len(np.unique(got)) == 2_000 and list(got) == sorted(got)
    assert not set(excluded.tolist()) & set(got.tolist())
    assert set(scored[1:300].tolist()) <= set(got.tolist()), "the previous round's uncertain"
    assert set(anomalous[1:].tolist()) <= set(got.tolist()), "the autoencoder's anomalous"
    assert set(look_alike.tolist()) <= set(got.tolist()), "the labelled artifact's neighbours"
    other = _hybrid_candidates(ctx, version=now.id, job_id=10, n=n, excluded=excluded)
    assert len(set(other.tolist()) - set(got.tolist())) > 800, "a fresh sample each round"
    settings.candidates = 0
    whole = _hybrid_candidates(ctx, version=now.id, job_id=9, n=n, excluded=excluded)
    assert len(whole) == n - 4, "0: every unlabelled patch"
