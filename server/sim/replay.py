"""One simulated curve: the ground truth labels what the loop proposes, round after round,
through the same job registry, steps and labels service as the workers and the web page."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from server.annotation.tasks import label_task
from server.db.base import write_transaction
from server.db.tables import (
    AnnotationTask,
    Annotator,
    Dataset,
    Job,
    Label,
    LabelSuspect,
    ModelVersion,
)
from server.db.vocabulary import TaskStatus, VersionStatus
from server.jobs import state
from server.jobs.kinds import JobKind
from server.jobs.runner import InlineSender
from server.labels.agreement import annotator_report
from server.labels.consensus import label_weights
from server.labels.service import labels_arrived
from server.labels.training_set import position_view, training_groups
from server.pipeline.audit import CACHE_FILE as AUDIT_CACHE
from server.pipeline.label_errors import suspects_of
from server.runtime import Runtime
from server.sim.crowd import Crowd, recovery

METRICS = ("f1", "pr_auc", "precision_at_recall_0.9", "precision", "recall")

ORACLE = "ground truth"  # the annotator whose labels are the ground truth


def replay(
    settings: Any,
    *,
    template: Path,
    budget: int,
    name: str,
    say: Callable[[str], None],
    crowd: Crowd | None = None,
) -> dict[str, Any]:
    """Rounds of propose -> label -> train -> score. The ground truth labels every proposal,
    or, with ``crowd``, simulated annotators with error rates do."""
    verdicts = {int(i): bool(t) for i, t in np.load(template / "verdicts.npy")}
    types: dict[str, str] = json.loads((template / "types.json").read_text())
    rt = Runtime.start(settings)
    sender = InlineSender()
    try:
        with write_transaction(rt.sessions) as session:
            ae = session.scalar(select(ModelVersion).where(ModelVersion.kind == "ae"))
            assert ae is not None, "the shared store has no autoencoder"
            dataset_id = ae.dataset_id
            prevalence = _audit_prevalence(session, dataset_id)
            # this curve's own first batch (its seed, its strategy), replacing the store's
            state.start_job(
                session, sender=sender, kind=JobKind.PROPOSE, dataset_id=dataset_id,
                params={"model_version_id": ae.id}, requested_by="simulate",
            )  # fmt: skip
        sender.run_pending(rt)
        curve: list[dict[str, Any]] = []
        labelled = 0
        last_version = 0
        while labelled < budget:
            started = time.perf_counter()
            with write_transaction(rt.sessions) as session:
                oracle = session.scalar(select(Annotator).where(Annotator.name == ORACLE))
                tasks = list(
                    session.scalars(
                        _open_proposals(dataset_id).limit(
                            min(settings.batch_size, budget - labelled)
                        )
                    )
                )
                for task in tasks:
                    is_artifact = verdicts[int(task.grid_index)]
                    if crowd is not None:
                        _crowd_labels(session, crowd, task, is_artifact, types)
                        continue
                    label_task(
                        session, task_id=task.id, annotator=oracle,
                        label="artifact" if is_artifact else "clean",
                        artifact_type=types.get(str(task.grid_index)) if is_artifact else None,
                        source="simulation", idempotency_key=None,
                    )  # fmt: skip
            if not tasks:
                break  # the loop proposed nothing more
            labelled += len(tasks)
            labels_arrived(rt, sender, dataset_id=dataset_id)
            sender.run_pending(rt)  # train -> score -> propose, as a worker would
            with write_transaction(rt.sessions) as session:
                version = session.scalar(
                    select(ModelVersion)
                    .where(
                        ModelVersion.kind == "classifier",
                        ModelVersion.status == VersionStatus.READY,
                    )
                    .order_by(ModelVersion.id.desc())
                    .limit(1)
                )
                positives = session.scalar(
                    select(func.count(Label.id)).where(
                        Label.label == "artifact", Label.task_id.in_(
                            select(AnnotationTask.id).where(AnnotationTask.kind == "proposal")
                        ),
                    )
                )  # fmt: skip
                failed = session.scalar(
                    select(Job).where(Job.state == "failed").order_by(Job.id.desc()).limit(1)
                )
                if failed is not None:
                    raise RuntimeError(f"{name}: {failed.kind} job failed: {failed.error}")
                if version is not None and version.id != last_version:
                    last_version = version.id
                    audit = (version.metrics or {}).get("audit", {})
                    row = {k: audit.get(k) for k in METRICS}
                    row["pr_auc_interval"] = (audit.get("intervals") or {}).get("pr_auc")
                    row.update(_test_scores(version))
                else:  # no training yet (one class only): the prevalence, as chance ranks
                    row = {"f1": 0.0, "pr_auc": prevalence, "precision_at_recall_0.9": 0.0}
            if crowd is not None:
                row.update(_crowd_view(rt, crowd, dataset_id, labelled))
            row.update(
                round=len(curve) + 1,
                labels=labelled,
                positives_found=int(positives or 0),
                seconds=round(time.perf_counter() - started, 2),
            )
            curve.append(row)
            say(f"{name}: {labelled} labels, test F1 {row['f1'] or 0:.2f}")
        if crowd is not None and 0 < crowd.ranking_shortfall() <= settings.batch_size:
            _rank_past_budget(rt, crowd, dataset_id, verdicts, types, labelled)
        with write_transaction(rt.sessions) as session:
            ran = dict(
                session.execute(select(Job.kind, func.count(Job.id)).group_by(Job.kind)).all()
            )
    finally:
        rt.close()
    outcome: dict[str, Any] = {"curve": curve, "jobs": {str(k): int(v) for k, v in ran.items()}}
    if crowd is not None:
        outcome["reliability_ranking"] = crowd.ranking_at
    return outcome


def _crowd_labels(
    session: Any, crowd: Crowd, task: AnnotationTask, truth: bool, types: dict[str, str]
) -> None:
    """One simulated annotator's label of ``task``: the least busy one who has not labelled
    the patch, flipped with their error rate."""
    who = crowd.choose(int(task.grid_index))
    if who is None:  # every simulated annotator has labelled this patch already
        return
    said, flipped = crowd.verdict(who, truth)
    row = session.scalar(select(Annotator).where(Annotator.name == who.name))
    done = label_task(
        session, task_id=task.id, annotator=row, label="artifact" if said else "clean",
        artifact_type=types.get(str(task.grid_index)) if said and truth else None,
        source="simulation", idempotency_key=None,
    )  # fmt: skip
    crowd.record(who, int(task.grid_index), int(done.label.id), flipped)


def _open_proposals(dataset_id: int) -> Any:
    """The dataset's open proposals in queue order, as annotators are offered them."""
    return (
        select(AnnotationTask)
        .where(
            AnnotationTask.dataset_id == dataset_id,
            AnnotationTask.kind == "proposal",
            AnnotationTask.status == TaskStatus.OPEN,
        )
        .order_by(AnnotationTask.rank, AnnotationTask.id)
    )


def _rank_past_budget(
    rt: Runtime,
    crowd: Crowd,
    dataset_id: int,
    verdicts: dict[int, bool],
    types: dict[str, str],
    labelled: int,
) -> None:
    """Only for the reliability check: when the budget ran out less than a round before the
    noisiest annotator gave their first ``RANKED_AFTER`` labels (re-label tasks of their labels
    go to the others), the crowd labels the next open proposals, least busy first as in the
    rounds, until they have, and the service's report is read once more. Nothing is trained on
    these labels: the curve ends at the budget."""
    given = sum(crowd.given.values())
    with write_transaction(rt.sessions) as session:
        for task in session.scalars(_open_proposals(dataset_id)).all():
            if not crowd.ranking_shortfall():
                break
            _crowd_labels(session, crowd, task, verdicts[int(task.grid_index)], types)
    _crowd_view(rt, crowd, dataset_id, labelled + sum(crowd.given.values()) - given)


def _crowd_view(rt: Runtime, crowd: Crowd, dataset_id: int, labelled: int) -> dict[str, Any]:
    """The service's view of the simulated annotators after a round: each one's estimated
    reliability beside their true error rate, how many flipped labels there are, and every
    checked label's P(wrong) under the consensus with the model (whatever the suspect
    threshold) beside whether it was flipped."""
    with write_transaction(rt.sessions) as session:
        report = annotator_report(session, dataset_id=dataset_id)
        suspects = set(
            session.scalars(
                select(LabelSuspect.label_id).where(LabelSuspect.dataset_id == dataset_id)
            )
        )
        dataset = session.get(Dataset, dataset_id)
        groups = training_groups(session, dataset=dataset) if dataset is not None else {}
        model = position_view(session, groups, dataset_id=dataset_id)
        position = {lab.id: key for key, labs in groups.items() for lab in labs}
        scored = [
            [round(wrong, 4), lab.id in crowd.flipped]
            for lab, wrong in suspects_of(
                groups, model=model, weights=label_weights(session), at=0.0
            )
            if position[lab.id] in model
        ]
    reliabilities = {r.annotator: r.reliability.value for r in report.annotators}
    return {
        "annotators": crowd.observe(reliabilities, labelled),
        "flipped": len(crowd.flipped),
        "label_errors": recovery([i in crowd.flipped for i in suspects], len(crowd.flipped)),
        "label_scores": scored,
    }


def _test_scores(version: Any) -> dict[str, Any]:
    """The version's score of every test (audit) patch, with its corner, and its threshold:
    what the audit step keeps beside the version's weights."""
    path = Path(version.weights_path or "").parent / AUDIT_CACHE
    if not version.weights_path or not path.exists():
        return {}
    saved = np.load(path)
    return {
        "test_origins": saved["origin"].tolist(),
        "test_scores": [round(float(v), 5) for v in saved["p"]],
        "threshold": (version.metrics or {}).get("threshold"),
    }


def _audit_prevalence(session: Any, dataset_id: int) -> float:
    audit = select(AnnotationTask.id).where(
        AnnotationTask.dataset_id == dataset_id, AnnotationTask.kind == "audit"
    )
    total = session.scalar(select(func.count(Label.id)).where(Label.task_id.in_(audit))) or 1
    positive = session.scalar(
        select(func.count(Label.id)).where(Label.task_id.in_(audit), Label.label == "artifact")
    )
    return float((positive or 0) / total)
