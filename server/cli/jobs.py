"""``artifact-loop pretrain | train | predict``: start a job of a dataset and follow it."""

from __future__ import annotations

import getpass
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from server.cli.common import console, err_console, friendly_errors
from server.cli.common import runtime as _runtime
from server.db.vocabulary import VersionStatus
from server.errors import ArtifactLoopError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from server.jobs.queue import JobSender
    from server.runtime import Runtime
    from server.settings import Settings

# Service modules are imported inside the commands that use them: the database layer and
# the webknossos library take seconds to load, which `--help` and every other command
# would pay.

TERMINAL = ("succeeded", "failed", "cancelled")
WORKER_HINT = "it runs when a worker is up (`artifact-loop up` or `artifact-loop worker`)"

WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait/--no-wait",
        help="Follow the job until it ends (Ctrl-C stops watching, not the job).",
    ),
]
DatasetArg = Annotated[str, typer.Argument(help="Name or id of the dataset.")]


def job_sender(settings: Settings) -> JobSender:
    """The sender every CLI command enqueues with: the configured broker, by task name."""
    from server.jobs.queue import CeleryJobSender, make_celery

    return CeleryJobSender(make_celery(settings), expires_s=settings.task_expires_s)


def start_dataset_job(
    session: Session,
    *,
    settings: Settings,
    kind: str,
    dataset_id: int,
    params: dict[str, Any] | None = None,
) -> tuple[int, bool]:
    """Start (or join, when one is already queued) a job; its id and whether it coalesced."""
    from server.jobs.state import start_job

    try:
        who = getpass.getuser()
    except Exception:  # no user name in this environment (containers)
        who = "cli"
    started = start_job(
        session,
        sender=job_sender(settings),
        kind=kind,
        dataset_id=dataset_id,
        params=params or {},
        requested_by=who,
    )
    return started.job.id, started.coalesced


def follow_job(rt: Runtime, *, job_id: int, label: str) -> dict[str, Any]:
    """Show a job's progress until it ends; its final row as a dict. Raises when it failed."""
    from server.db.base import session_scope
    from server.db.tables import Job

    def snapshot() -> dict[str, Any]:
        with session_scope(rt.sessions) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise ArtifactLoopError(f"job {job_id} disappeared")
            return {
                "id": job.id,
                "kind": job.kind,
                "state": job.state,
                "progress": float(job.progress or 0.0),
                "message": job.message or "",
                "error": job.error,
                "result": dict(job.result or {}),
            }

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        transient=True,
    )
    with progress:
        bar = progress.add_task(label, total=1.0, info="")
        queued_since = time.monotonic()
        while True:
            job = snapshot()
            if job["state"] in TERMINAL:
                break
            info = job["message"]
            if job["state"] == "queued" and time.monotonic() - queued_since > 10:
                info = f"queued; {WORKER_HINT}"
            progress.update(bar, completed=job["progress"], info=info)
            time.sleep(1.0)
    if job["state"] != "succeeded":
        raise ArtifactLoopError(
            f"{job['kind']} job {job_id} {job['state']}: {job['error'] or job['message']}"
        )
    return job


def _run_job_command(
    *, dataset: str, kind: str, params: dict[str, Any], wait: bool, label: str
) -> dict[str, Any] | None:
    from server.datasets.service import get_dataset
    from server.db.base import write_transaction

    rt = _runtime()
    try:
        with write_transaction(rt.sessions) as session:
            target = get_dataset(session, dataset)
            name = target.name
            if kind != "pretrain":
                _require_autoencoder(session, dataset_id=target.id, name=name, kind=kind)
            if kind == "predict" and "model_version_id" not in params:
                _require_classifier(session, dataset_id=target.id, name=name)
            job_id, coalesced = start_dataset_job(
                session, settings=rt.settings, kind=kind, dataset_id=target.id, params=params
            )
        verb = "joined the waiting" if coalesced else "started"
        console.print(
            f"{verb} {kind} job {job_id} of dataset {name!r}", highlight=False, soft_wrap=True
        )
        if not wait:
            console.print(
                f"follow it with `artifact-loop job {job_id}`; {WORKER_HINT}", soft_wrap=True
            )
            return None
        try:
            return follow_job(rt, job_id=job_id, label=f"{label} {name}")
        except KeyboardInterrupt:
            console.print(f"stopped watching; job {job_id} goes on")
            return None
    finally:
        rt.close()


def _require_autoencoder(session: Session, *, dataset_id: int, name: str, kind: str) -> None:
    """A training or prediction needs a pretrained autoencoder: say what to do instead of
    queueing a job that can only fail."""
    from sqlalchemy import select

    from server.db.tables import ModelVersion
    from server.jobs.state import active_jobs

    ready = session.scalar(
        select(ModelVersion.id).where(
            ModelVersion.dataset_id == dataset_id,
            ModelVersion.kind == "ae",
            ModelVersion.status == VersionStatus.READY,
        )
    )
    if ready is not None:
        return
    waiting = active_jobs(session, dataset_id=dataset_id, kinds=("pretrain",))
    if waiting:
        raise ArtifactLoopError(
            f"dataset {name!r} has no autoencoder yet: pretrain job {waiting[0].id} is "
            f"{waiting[0].state}; {kind} after it ends (`artifact-loop job {waiting[0].id}`)"
        )
    raise ArtifactLoopError(
        f"dataset {name!r} has no autoencoder yet: run `artifact-loop pretrain {name}` first"
    )


def _require_classifier(session: Session, *, dataset_id: int, name: str) -> None:
    from server.versions.service import active_model

    if active_model(session, dataset_id=dataset_id, kind="classifier") is None:
        raise ArtifactLoopError(
            f"dataset {name!r} has no classifier yet: label patches (a training starts after "
            f"ARTIFACT_LOOP_RETRAIN_EVERY labels) or run `artifact-loop train {name}`"
        )


def _describe_version(rt: Runtime, version_id: int | None) -> str:
    from server.db.base import session_scope
    from server.db.tables import ModelVersion

    if version_id is None:
        return ""
    with session_scope(rt.sessions) as session:
        version = session.get(ModelVersion, version_id)
        if version is None:
            return f"model version {version_id}"
        audit = (version.metrics or {}).get("audit") or {}
        parts = [f"model version {version.id} ({version.kind}, {version.status}"]
        if version.kind == "classifier":
            parts.append(f", {version.label_count} labels")
        if version.kind == "classifier":
            parts.append(_audit_words(audit))
        return "".join(parts) + ")"


def _audit_words(audit: dict[str, Any]) -> str:
    """F1 and PR-AUC with their intervals, or why nothing was measured: never 0.00 for that."""
    from models.metrics import report_not_measured

    counts = f"{audit.get('n', 0)} audit patches, {audit.get('positives', 0)} artifacts"
    reason = report_not_measured(audit)
    if reason is not None:
        return f", audit: {reason} ({counts})"
    words = []
    for name, title in (("f1", "F1"), ("pr_auc", "PR-AUC")):
        value, interval = audit.get(name), (audit.get("intervals") or {}).get(name)
        if value is None:
            continue
        words.append(
            f"{title} {value:.2f}" + (f" [{interval[0]:.2f}-{interval[1]:.2f}]" if interval else "")
        )
    return f", audit {', '.join(words)} on {counts}"


def register(app: typer.Typer) -> None:
    """Add the job commands to the top-level app."""

    @app.command()
    @friendly_errors
    def pretrain(
        dataset: DatasetArg,
        patches: Annotated[
            int | None, typer.Option(min=1, help="Unlabelled patches (default: settings).")
        ] = None,
        epochs: Annotated[
            int | None, typer.Option(min=1, help="Epochs (default: settings).")
        ] = None,
        wait: WaitOption = True,
    ) -> None:
        """Pretrain the autoencoder of a dataset; scoring and first proposals follow."""
        params = {k: v for k, v in {"patches": patches, "epochs": epochs}.items() if v is not None}
        job = _run_job_command(
            dataset=dataset, kind="pretrain", params=params, wait=wait, label="pretraining"
        )
        if job is not None:
            _report_model(job)

    @app.command()
    @friendly_errors
    def train(
        dataset: DatasetArg,
        epochs: Annotated[int | None, typer.Option(min=1, help="Epochs at most.")] = None,
        wait: WaitOption = True,
    ) -> None:
        """Train a classifier on the dataset's labels now; scoring and proposals follow."""
        params = {"epochs": epochs} if epochs is not None else {}
        job = _run_job_command(
            dataset=dataset, kind="train", params=params, wait=wait, label="training"
        )
        if job is not None:
            _report_model(job)

    @app.command()
    @friendly_errors
    def predict(
        dataset: DatasetArg,
        stride: Annotated[int, typer.Option(help="Pixels per output cell: 16, 32 or 64.")] = 32,
        threshold: Annotated[
            float | None, typer.Option(help="Mask threshold (default: the calibrated one).")
        ] = None,
        bbox: Annotated[
            str | None, typer.Option(help="Only x,y,z,w,h,d (mag-1 voxels); default: all.")
        ] = None,
        version: Annotated[
            int | None, typer.Option(help="Model version id (default: the active classifier).")
        ] = None,
        wait: WaitOption = True,
    ) -> None:
        """Write the artifact-probability map of a dataset as webKnossos layers."""
        params: dict[str, Any] = {"stride": stride}
        if threshold is not None:
            params["threshold"] = threshold
        if version is not None:
            params["model_version_id"] = version
        if bbox:
            try:
                params["bbox"] = [int(v) for v in bbox.split(",")]
            except ValueError:
                raise ArtifactLoopError(f"--bbox {bbox!r}: write x,y,z,w,h,d") from None
        job = _run_job_command(
            dataset=dataset, kind="predict", params=params, wait=wait, label="predicting"
        )
        if job is None:
            return
        r = job["result"]
        gt = r.get("ground_truth") or {}
        console.print(
            f"{r.get('clusters', 0)} artifact clusters"
            + (f"; patch-level PR-AUC {gt['pr_auc']:.3f}" if gt.get("pr_auc") is not None else "")
            + f"\nwebKnossos dataset (artifact_prob, artifact_mask): {r.get('output')}"
            + f"\nclusters to review: {r.get('nml')}",
            highlight=False,
        )

    @app.command("job")
    @friendly_errors
    def job_show(
        job_id: Annotated[int, typer.Argument(help="Job id.")],
        wait: WaitOption = True,
    ) -> None:
        """Show a job's state, and follow it until it ends."""
        from server.db.base import session_scope
        from server.jobs.state import get_job

        rt = _runtime()
        try:
            with session_scope(rt.sessions) as session:
                job = get_job(session, job_id)
                kind, state, message = job.kind, job.state, job.message
            if state in TERMINAL or not wait:
                detail = f" ({message})" if message and message != state else ""
                console.print(
                    f"{kind} job {job_id}: {state}{detail}", highlight=False, soft_wrap=True
                )
                return
            try:
                follow_job(rt, job_id=job_id, label=f"{kind} job {job_id}")
            except KeyboardInterrupt:
                return
            console.print(f"{kind} job {job_id}: succeeded", highlight=False, soft_wrap=True)
        finally:
            rt.close()

    def _report_model(job: dict[str, Any]) -> None:
        rt = _runtime()
        try:
            described = _describe_version(rt, job["result"].get("model_version_id"))
        finally:
            rt.close()
        console.print(
            f"{job['kind']} job {job['id']} succeeded"
            + (f": {described}" if described else "")
            + "; scoring and new proposals follow",
            highlight=False,
        )


def start_pending(rt: Runtime) -> list[str]:
    """What `up` starts: pretraining of datasets without an autoencoder, a training where
    enough new labels wait, and queued jobs sent again (a message the broker lost is then
    found; a duplicate is harmless because a worker claims a job conditionally)."""
    from sqlalchemy import select

    from server.db.base import write_transaction
    from server.db.tables import Dataset, Job, ModelVersion
    from server.jobs.state import active_jobs
    from server.labels.service import labels_arrived

    started: list[str] = []
    sender = job_sender(rt.settings)
    with write_transaction(rt.sessions) as session:
        queued = [(j.id, j.kind) for j in session.scalars(select(Job).where(Job.state == "queued"))]
    for job_id, kind in queued:
        sender.send(job_id=job_id, kind=kind)
    with write_transaction(rt.sessions) as session:
        datasets = [(d.id, d.name) for d in session.scalars(select(Dataset).order_by(Dataset.id))]
    for dataset_id, name in datasets:
        with write_transaction(rt.sessions) as session:
            has_ae = session.scalar(
                select(ModelVersion.id).where(
                    ModelVersion.dataset_id == dataset_id,
                    ModelVersion.kind == "ae",
                    ModelVersion.status.in_((VersionStatus.READY, VersionStatus.TRAINING)),
                )
            )
            if has_ae is None:
                if not active_jobs(session, dataset_id=dataset_id, kinds=("pretrain",)):
                    job_id, _ = start_dataset_job(
                        session, settings=rt.settings, kind="pretrain", dataset_id=dataset_id
                    )
                    started.append(f"pretrain job {job_id} of {name!r}")
                continue
        job = labels_arrived(rt, sender, dataset_id=dataset_id)
        if job is not None and job.state == "queued" and job.id not in {i for i, _ in queued}:
            started.append(f"train job {job.id} of {name!r}")
    if queued:
        started.append(f"{len(queued)} queued job(s) sent to the broker again")
    return started
