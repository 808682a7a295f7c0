"""The shared start of every simulated curve: the dataset registered, the held-out sections
labelled by the oracle as the audit set, the simulated annotators added, the autoencoder
pretrained and its features computed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from server.errors import InvalidInput
from server.labels.consensus import check_aggregation
from server.labels.truth import load_truth, load_truth_types
from server.sim.baselines import ae_embeddings, patch_features
from server.sim.replay import ORACLE


def prepare(
    dataset: Path,
    folder: Path,
    config: Any,
    settings: Any,
    *,
    device: str,
    report: Callable[[str], None],
    features: bool = False,
) -> dict[str, int]:
    """The shared start of every curve: the dataset registered, the held-out sections as a
    labelled audit set, the autoencoder pretrained and its features computed; with
    ``features``, the baselines' patch statistics of every ground-truth patch as well."""
    from server.annotation.proposals import add_audit_patches
    from server.annotation.tasks import label_task
    from server.datasets.service import grid_of, open_source, register_dataset
    from server.db.base import write_transaction
    from server.db.tables import AnnotationTask, Annotator, Dataset
    from server.jobs import state
    from server.jobs.kinds import JobKind
    from server.jobs.runner import InlineSender
    from server.pixels.reading import read_at
    from server.runtime import Runtime

    origins, truth = load_truth(dataset)
    types = load_truth_types(dataset, len(truth))
    # the shared start runs before the curves, alone: on every core
    rt = Runtime.start(settings.model_copy(update={"torch_threads": 0}))
    try:
        with write_transaction(rt.sessions) as session:
            ds = register_dataset(
                session, name=dataset.name or "dataset", path=str(dataset), layer=config.layer
            )
            grid = grid_of(ds)
            index = grid.indices(origins)
            if (index < 0).any():
                raise InvalidInput(
                    f"{int((index < 0).sum())} ground-truth patches are not on the dataset's "
                    f"grid of {ds.patch_size} px patches"
                )
            sections = np.unique(origins[:, 2])
            test = np.isin(origins[:, 2], sections[:: config.test_every])
            add_audit_patches(session, dataset=ds, grid=grid, indices=np.sort(index[test]))
            session.add(Annotator(name=ORACLE, role="annotator"))
            session.add_all(Annotator(name=a.name, role="annotator") for a in config.annotators)
            if not config.annotators:  # the oracle alone: no second person to give a patch to
                ds.settings = {**(ds.settings or {}), "overlap_share": 0.0}
            if config.label_aggregation is not None:
                aggregation = check_aggregation(config.label_aggregation)
                ds.settings = {**(ds.settings or {}), "label_aggregation": aggregation}
            session.flush()
            dataset_id = ds.id
        report(f"labelling {int(test.sum()):,} held-out patches (the audit set)")
        verdict = {int(i): (bool(t), ty) for i, t, ty in zip(index, truth, types, strict=True)}
        with write_transaction(rt.sessions) as session:
            oracle_row = session.scalar(select(Annotator).where(Annotator.name == ORACLE))
            for task in session.scalars(
                select(AnnotationTask).where(AnnotationTask.kind == "audit")
            ):
                is_artifact, kind = verdict[int(task.grid_index)]
                label_task(
                    session, task_id=task.id, annotator=oracle_row,
                    label="artifact" if is_artifact else "clean",
                    artifact_type=kind if is_artifact else None, source="simulation", idempotency_key=None,
                )  # fmt: skip
        report("pretraining the autoencoder and computing its features")
        sender = InlineSender()
        with write_transaction(rt.sessions) as session:
            state.start_job(
                session,
                sender=sender,
                kind=JobKind.PRETRAIN,
                dataset_id=dataset_id,
                requested_by="simulate",
            )
        sender.run_pending(rt)
        raise_failed(rt)
        if features:
            report(f"computing the baselines' features of {len(origins):,} patches")
            with write_transaction(rt.sessions) as session:
                ds = session.get(Dataset, dataset_id)
                assert ds is not None
                session.expunge(ds)
            with open_source(ds) as source:
                values = np.concatenate(
                    [
                        patch_features(read_at(source, ds, origins[s : s + 256]))
                        for s in range(0, len(origins), 256)
                    ]
                )
            np.savez(
                folder / "baseline_features.npz", features=values, truth=truth, test=test,
                embedding=ae_embeddings(settings, rt, dataset_id, index),
            )  # fmt: skip
    finally:
        rt.close()
    np.save(
        folder / "verdicts.npy", np.asarray([[i, t] for i, (t, _) in verdict.items()], np.int64)
    )
    (folder / "types.json").write_text(
        json.dumps({str(i): ty for i, (t, ty) in verdict.items() if t and ty})
    )
    return {
        "pool": int((~test).sum()),
        "test": int(test.sum()),
        "test_positives": int(truth[test].sum()),
    }


def raise_failed(rt: Any) -> None:
    from server.db.base import write_transaction
    from server.db.tables import Job
    from server.jobs.kinds import JobState

    with write_transaction(rt.sessions) as session:
        failed = session.scalar(select(Job).where(Job.state == JobState.FAILED).limit(1))
        if failed is not None:
            raise InvalidInput(f"{failed.kind} job failed: {failed.error}")
