"""A version scored again keeps its scores until the new ones are all written: a re-scoring
cancelled half-way leaves propose working on the scores before it. PostgreSQL, rolled back."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy.orm import Session

from server.jobs import state
from server.jobs.context import StepContext
from server.jobs.kinds import JobKind
from server.pipeline import propose, score
from server.versions.features import AEFeatures, features_dir, read_scores, scores_dir, write_scores
from tests import factories as make

pytestmark = pytest.mark.postgres


def _running(ctx: StepContext, session: Session, kind: JobKind, **params: object) -> int:
    job = state.create_job(session, kind=kind, dataset_id=params.pop("dataset_id"), params=params)  # type: ignore[arg-type]
    session.commit()
    assert state.claim_job(ctx.sessions, job_id=job.id, worker="test") is not None
    return job.id


def test_a_cancelled_rescoring_leaves_the_scores_before_it(
    ctx: StepContext, session: Session
) -> None:
    ds = make.dataset(session)  # a 4 x 4 x 2 grid
    ae = make.version(session, ds, kind="ae")
    clf = make.version(session, ds, kind="classifier", parent_id=ae.id)
    session.commit()
    settings = ctx.rt.settings
    n = 32
    features = AEFeatures(features_dir(settings, dataset_id=ds.id, version_id=ae.id))
    features.plan(patches=n, chunk_patches=n)
    rng = np.random.default_rng(0)
    features.write_chunk(
        0,
        recon=rng.random(n).astype(np.float32),
        embedding=rng.normal(size=(n, 4)).astype(np.float16),
    )
    # the version's scores of an earlier scoring, as a finished scoring left them
    scored = np.arange(n, dtype=np.int64)
    first = scores_dir(settings, dataset_id=ds.id, version_id=clf.id)
    first.mkdir(parents=True)
    p = rng.random(n).astype(np.float32)
    write_scores(first / "chunk-000000.npz", index=scored, p_artifact=p, uncertainty=1 - p)

    rescoring = _running(ctx, session, JobKind.SCORE, dataset_id=ds.id, model_version_id=clf.id)
    with ctx.sessions() as s:
        planned = score.run(ctx, state.get_job(s, rescoring))
        state.cancel_job(s, job_id=rescoring)  # before any chunk ran
        s.commit()
    assert planned.children

    kept = read_scores(scores_dir(settings, dataset_id=ds.id, version_id=clf.id))
    assert "index" in kept and np.array_equal(kept["index"], scored)
    proposing = _running(
        ctx, session, JobKind.PROPOSE, dataset_id=ds.id, model_version_id=clf.id,
        strategy="uncertainty", batch_size=5,
    )  # fmt: skip
    with ctx.sessions() as s:
        proposed = propose.run(ctx, state.get_job(s, proposing))
    assert proposed["proposed"] == 5


def test_a_finished_rescoring_replaces_the_scores(ctx: StepContext, session: Session) -> None:
    ds = make.dataset(session)
    ae = make.version(session, ds, kind="ae")
    clf = make.version(session, ds, kind="classifier", parent_id=ae.id)
    session.commit()
    settings = ctx.rt.settings
    old = scores_dir(settings, dataset_id=ds.id, version_id=clf.id)
    old.mkdir(parents=True)
    write_scores(old / "chunk-000000.npz", index=np.arange(4), p_artifact=np.zeros(4))
    with ctx.sessions() as s:
        job = state.get_job(
            s, _running(ctx, session, JobKind.SCORE, dataset_id=ds.id, model_version_id=clf.id)
        )
    planned = score.scoring_dir(settings, dataset_id=ds.id, version_id=clf.id, job_id=job.id)
    planned.mkdir(parents=True)
    # what the scoring's chunk jobs write, each into the scoring's own folder
    write_scores(planned / "chunk-000000.npz", index=np.arange(8, 11), p_artifact=np.ones(3))
    assert read_scores(scores_dir(settings, dataset_id=ds.id, version_id=clf.id))[
        "index"
    ].tolist() == [0, 1, 2, 3]
    job.result = {"model_version_id": clf.id}
    score.chunks_done(ctx, job)
    now = scores_dir(settings, dataset_id=ds.id, version_id=clf.id)
    assert now == planned and read_scores(now)["index"].tolist() == [8, 9, 10]
    assert not (old / "chunk-000000.npz").exists(), "the replaced scores are deleted"
