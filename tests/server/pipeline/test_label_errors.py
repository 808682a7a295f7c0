"""Label errors through the loop: after a training, labels the model confidently contradicts
out of fold are suspects, and the next batch offers them as re-label tasks to someone else,
never to the annotator who gave them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import select

from server.annotation import task_state
from server.annotation.leasing import lease_next
from server.datasets.service import register_dataset
from server.db.base import write_transaction
from server.db.tables import AnnotationTask, Annotator, Dataset, Job, LabelSuspect
from server.jobs import state
from server.jobs.kinds import JobKind, JobState
from server.jobs.runner import InlineSender
from server.labels.rows import NewLabel
from server.labels.service import create_label
from server.pipeline.label_errors import view_inputs
from server.runtime import Runtime
from server.settings import Settings
from server.wklib import wk

PATCH = 140


def _write_dataset(
    path: Path, *, side: int = 6, sections: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Noise, with a bright disc in about a third of the patches (the artifacts): patch
    origins and which are artifacts, in grid order."""
    rng = np.random.default_rng(11)
    data = rng.normal(148, 20, size=(side * PATCH, side * PATCH, sections))
    yy, xx = np.mgrid[:PATCH, :PATCH]
    disc = (xx - 70) ** 2 + (yy - 70) ** 2 < 35**2
    origins, truth = [], []
    for z in range(sections):
        for gy in range(side):
            for gx in range(side):
                artifact = bool(rng.random() < 0.35)
                if artifact:
                    tile = data[gx * PATCH : (gx + 1) * PATCH, gy * PATCH : (gy + 1) * PATCH, z]
                    tile[disc.T] = 250
                origins.append((gx * PATCH, gy * PATCH, z))
                truth.append(artifact)
    ds = wk.Dataset(path, voxel_size=(32, 32, 35))
    layer = ds.add_layer("color", wk.COLOR_CATEGORY, dtype="uint8", data_format="zarr3")
    mag = layer.add_mag(1, chunk_shape=(32, 32, 32), shard_shape=(256, 256, 32))
    mag.write(np.clip(data, 0, 255).astype(np.uint8), absolute_offset=(0, 0, 0), allow_resize=True)
    return np.asarray(origins), np.asarray(truth)


def test_wrong_labels_become_suspects_and_relabel_tasks_for_another_annotator(
    tmp_path: Path,
) -> None:
    data = tmp_path / "ds"
    origins, truth = _write_dataset(data)
    settings = Settings(
        data_dir=tmp_path / "loop", broker_url="filesystem://", retrain_every=10_000,
        pretrain_patches=128, pretrain_epochs=2, train_epochs=15, tta=1, audit_size=8,
        batch_size=20,
    )  # fmt: skip
    rt = Runtime.start(settings)
    sender = InlineSender()
    try:
        with write_transaction(rt.sessions) as session:
            ds = register_dataset(session, name="ds", path=str(data))
            first, second = Annotator(name="first"), Annotator(name="second")
            session.add_all([first, second])
            state.start_job(session, sender=sender, kind=JobKind.PRETRAIN, dataset_id=ds.id)
        sender.run_pending(rt)  # pretrain -> features -> first batch (and the audit set)
        rng = np.random.default_rng(0)
        with write_transaction(rt.sessions) as session:
            audit = set(
                session.execute(
                    select(AnnotationTask.x, AnnotationTask.y, AnnotationTask.z).where(
                        AnnotationTask.kind == "audit"
                    )
                ).all()
            )
            dataset = session.get(Dataset, ds.id)
            who = session.get(Annotator, first.id)
            assert dataset is not None and who is not None
            # most patches labelled, the rest left for new proposals
            free = [i for i, o in enumerate(origins) if tuple(int(v) for v in o) not in audit]
            free = sorted(rng.choice(free, int(0.6 * len(free)), replace=False).tolist())
            artifacts = [i for i in free if truth[i]]
            cleans = [i for i in free if not truth[i]]
            wrong = {
                *rng.choice(artifacts, 3, replace=False),
                *rng.choice(cleans, 3, replace=False),
            }
            wrong_ids: set[int] = set()
            for i in free:
                said = bool(truth[i]) != (i in wrong)
                x, y, z = (int(v) for v in origins[i])
                label, _ = create_label(
                    session, dataset=dataset, annotator=who, source="api",
                    new=NewLabel(x=x, y=y, z=z, w=PATCH, h=PATCH,
                                 label="artifact" if said else "clean"),
                )  # fmt: skip
                if i in wrong:
                    wrong_ids.add(label.id)
            state.start_job(session, sender=sender, kind=JobKind.TRAIN, dataset_id=ds.id)
        sender.run_pending(rt)  # train (and check the labels) -> score -> propose
        with write_transaction(rt.sessions) as session:
            failed = session.scalars(select(Job).where(Job.state == JobState.FAILED)).all()
            assert failed == [], [j.error for j in failed]
            train = session.scalar(select(Job).where(Job.kind == JobKind.TRAIN))
            assert train is not None
            checked = train.result["label_errors"]
            assert checked["checked"] == len(free) and "reason" not in checked
            suspects = {s.label_id: s for s in session.scalars(select(LabelSuspect))}
            found = wrong_ids & set(suspects)
            assert len(found) >= 4, f"found {len(found)} of 6 wrong labels among {len(suspects)}"
            assert len(found) / len(suspects) >= 0.5
            relabel = session.scalars(
                select(AnnotationTask).where(
                    AnnotationTask.reason == "relabel", AnnotationTask.status == "open"
                )
            ).all()
            batch = session.scalars(
                select(AnnotationTask).where(
                    AnnotationTask.kind == "proposal", AnnotationTask.status == "open"
                )
            ).all()
            assert relabel, "the next batch offers suspects for a second look"
            assert len(relabel) <= 0.2 * settings.batch_size
            assert all(t.labels_wanted == 1 and t.w == 140 for t in relabel)
            relabel_ids = {t.id for t in relabel}
            assert len(batch) > len(relabel), "beside new patches"
        # the annotator who gave the labels is never offered them; someone else is
        offered_first = _lease_all(rt, annotator_id=first.id, dataset_id=ds.id)
        assert offered_first and not offered_first & relabel_ids
        with write_transaction(rt.sessions) as session:
            session.execute(
                AnnotationTask.__table__.update()
                .where(AnnotationTask.status == "leased")
                .values(task_state.reopened())
            )
        offered_second = _lease_all(rt, annotator_id=second.id, dataset_id=ds.id)
        assert relabel_ids <= offered_second
    finally:
        rt.close()


def _lease_all(rt: Runtime, *, annotator_id: int, dataset_id: int) -> set[int]:
    """Every task the annotator is offered, leasing one after another (a lease beyond the
    few an annotator may hold goes back to the queue, so each is then marked labelled)."""
    offered: set[int] = set()
    while True:
        with write_transaction(rt.sessions) as session:
            annotator = session.get(Annotator, annotator_id)
            assert annotator is not None
            got = lease_next(session, dataset_id=dataset_id, annotator=annotator, lease_seconds=600)
            if got is None:
                return offered
            task, _ = got
            assert task.id not in offered
            offered.add(task.id)
            # out of this annotator's way, without a label
            task_state.set_state(task, task_state.retired())


def test_the_check_reads_the_classifier_features_beside_its_own_logit() -> None:
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    saved = {"features": features, "p_artifact": np.array([0.5, 0.9, 1.0], dtype=np.float32)}
    inputs = view_inputs(saved)
    assert inputs.shape == (3, 5) and np.array_equal(inputs[:, :4], features)
    assert inputs[0, 4] == 0.0 and np.isclose(inputs[1, 4], np.log(9.0))
    assert np.isfinite(inputs[2, 4]) and inputs[2, 4] > 10  # a certain 1.0 stays finite
