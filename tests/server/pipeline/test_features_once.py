"""Autoencoder features are computed once per autoencoder version: a second training on the
same autoencoder scores only its candidates, with the classifier alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import select

from server.datasets.service import register_dataset
from server.db.base import write_transaction
from server.db.tables import AnnotationTask, Annotator, Job, ModelVersion
from server.jobs import state
from server.jobs.kinds import JobKind, JobState
from server.jobs.runner import InlineSender
from server.labels.rows import NewLabel
from server.labels.service import create_label, labels_arrived
from server.runtime import Runtime
from server.settings import Settings
from server.sim.synth import make_synthetic_dataset
from server.versions.features import AEFeatures, features_dir, read_scores, scores_dir


def test_a_second_training_computes_no_autoencoder_features(tmp_path: Path) -> None:
    data = tmp_path / "ds"
    make_synthetic_dataset(data, seed=3, shape=(840, 4), artifact_rate=3.0)
    settings = Settings(
        data_dir=tmp_path / "loop", broker_url="filesystem://", retrain_every=10,
        pretrain_patches=64, pretrain_epochs=1, train_epochs=2, tta=1, candidates=40,
        audit_size=8, batch_size=10,
    )  # fmt: skip
    rt = Runtime.start(settings)
    sender = InlineSender()
    try:
        with write_transaction(rt.sessions) as session:
            ds = register_dataset(session, name="ds", path=str(data))
            annotator = Annotator(name="a")
            session.add(annotator)
            state.start_job(session, sender=sender, kind=JobKind.PRETRAIN, dataset_id=ds.id)
        sender.run_pending(rt)  # pretrain -> score (features) -> propose
        with write_transaction(rt.sessions) as session:
            ae = session.scalar(select(ModelVersion).where(ModelVersion.kind == "ae"))
            assert ae is not None
            ae_chunks = _chunks_of(session, ae.id)
        assert (
            ae_chunks == 1
            and AEFeatures(features_dir(settings, dataset_id=ds.id, version_id=ae.id)).complete()
        )
        for round_ in range(2):
            with write_transaction(rt.sessions) as session:
                tasks = session.scalars(
                    select(AnnotationTask).where(
                        AnnotationTask.status == "open", AnnotationTask.kind == "proposal"
                    )
                ).all()[:10]
                who = session.scalar(select(Annotator))
                for i, task in enumerate(tasks):
                    create_label(
                        session, dataset=session.get(type(ds), ds.id), annotator=who, source="api",
                        new=NewLabel(x=task.x, y=task.y, z=task.z, w=task.w, h=task.h,
                                     label="artifact" if (i + round_) % 3 == 0 else "clean"),
                    )  # fmt: skip
            assert labels_arrived(rt, sender, dataset_id=ds.id) is not None
            sender.run_pending(rt)  # train -> score (candidates) -> propose
        with write_transaction(rt.sessions) as session:
            classifiers = session.scalars(
                select(ModelVersion).where(
                    ModelVersion.kind == "classifier", ModelVersion.status == "ready"
                )
            ).all()
            assert len(classifiers) == 2 and all(c.parent_id == ae.id for c in classifiers)
            first, second = sorted(classifiers, key=lambda c: c.id)
            assert first.metrics["warm_start_from"] is None, "the first starts from the AE"
            assert second.metrics["warm_start_from"] == first.id, "the next from the active one"
            assert _chunks_of(session, ae.id) == 1, "the autoencoder's features were not redone"
            failed = session.scalars(select(Job).where(Job.state == JobState.FAILED)).all()
            assert failed == []
            for clf in classifiers:
                scores = read_scores(scores_dir(settings, dataset_id=ds.id, version_id=clf.id))
                assert "recon_error" not in scores, "no autoencoder pass beside the classifier"
                assert len(scores["index"]) <= 40 and np.isfinite(scores["p_artifact"]).all()
    finally:
        rt.close()


def _chunks_of(session: object, version_id: int) -> int:
    return sum(
        1
        for job in session.scalars(select(Job).where(Job.kind == JobKind.SCORE_CHUNK))  # type: ignore[attr-defined]
        if job.params["model_version_id"] == version_id
    )


def test_cold_start_features_are_bounded_and_keep_the_most_anomalous(tmp_path: Path) -> None:
    from server.acquisition import candidates

    features = AEFeatures(tmp_path / "features")
    chunks = features.plan(patches=10_000, chunk_patches=1_000)
    rng = np.random.default_rng(0)
    recon = rng.normal(size=10_000).astype(np.float32)
    recon[[17, 4242, 9999]] = 50.0  # three clear outliers
    for c in range(chunks):
        part = slice(c * 1000, (c + 1) * 1000)
        features.write_chunk(
            c, recon=recon[part], embedding=rng.normal(size=(1000, 4)).astype(np.float16)
        )
    small = candidates.bounded_features(features, excluded=np.asarray([5]), top=40, seed=1)
    assert np.array_equal(small[0], np.arange(10_000)), "a small grid is passed on whole"
    old = candidates.RESERVOIR
    candidates.RESERVOIR = 500
    try:
        idx, got_recon, embed = candidates.bounded_features(
            features, excluded=np.asarray([4242]), top=40, seed=1
        )
    finally:
        candidates.RESERVOIR = old
    assert len(idx) <= 540 and embed.shape == (len(idx), 4)
    assert {17, 9999} <= set(idx.tolist()), "outliers survive the bound"
    assert np.array_equal(got_recon, recon[idx]) and list(idx) == sorted(idx)
