"""The ``artifact-loop`` command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, TaskID
from rich.table import Table

from server.cli.common import console, err_console, friendly_errors
from server.cli.common import runtime as _runtime
from server.cli.jobs import WORKER_HINT, start_dataset_job, start_pending
from server.cli.jobs import register as _register_job_commands
from server.cli.labels import labels_app
from server.cli.link import register as _register_link_command
from server.cli.sim import register as _register_sim_commands
from server.cli.tokens import token_app
from server.errors import ArtifactLoopError

# Service modules are imported inside the commands that use them: the database layer and
# the webknossos library take seconds to load, which `--help` and every other command
# would pay.

app = typer.Typer(
    name="artifact-loop",
    help="Active learning for imaging artifacts in multi-beam SEM datasets stored in webKnossos.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
dataset_app = typer.Typer(help="Register and inspect datasets.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(dataset_app, name="dataset")
_register_link_command(dataset_app)
app.add_typer(token_app, name="token")
app.add_typer(labels_app, name="labels")
_register_job_commands(app)
_register_sim_commands(app)


# -- synth -----------------------------------------------------------------------------------
@app.command()
@friendly_errors
def synth(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder to write the dataset to (must not exist or be empty).")
    ],
    seed: Annotated[
        int, typer.Option(help="Random seed; the same seed gives the same dataset.")
    ] = 0,
    size: Annotated[
        str,
        typer.Option(
            help="small (<=5,000 patches), medium (~20,000), large (~100,000) or huge "
            "(1,000,000 patches: 8 sections written, repeated to 400 by hard links)."
        ),
    ] = "small",
) -> None:
    """Write a synthetic mSEM dataset with injected artifacts and its ground truth."""
    from server.sim.synth import make_synthetic_dataset

    # the bar starts with the first section, so bad input (checked before) prints one line
    progress = Progress(console=err_console, transient=True)
    bar: list[TaskID] = []

    def report(done: int, total: int) -> None:
        if not bar:
            progress.start()
            bar.append(progress.add_task(f"writing {size} dataset", total=total))
        progress.update(bar[0], completed=done, total=total)

    try:
        if size == "huge":
            from server.sim.synth_tiled import make_repeated_dataset

            summary = make_repeated_dataset(out_dir, seed=seed, progress=report)
        else:
            summary = make_synthetic_dataset(out_dir, seed=seed, size=size, progress=report)  # type: ignore[arg-type]
    finally:
        if bar:  # stopping a bar that never started prints an empty line
            progress.stop()
    console.print(
        f"wrote {summary.path}: {summary.n_patches:,} patches of 140 x 140, "
        f"{summary.n_artifact_patches:,} with artifacts "
        f"({summary.n_artifact_patches / max(summary.n_patches, 1):.1%}) in {summary.seconds:.1f} s"
    )
    if summary.per_type:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in summary.per_type.items())
        console.print(f"artifact patches by type: {kinds}", highlight=False)
    console.print(f"ground truth: {Path(summary.path) / 'ground_truth.csv'}", soft_wrap=True)


# -- db ----------------------------------------------------------------------------------------
@db_app.command("upgrade")
@friendly_errors
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Create or upgrade the database schema."""
    from sqlalchemy.exc import OperationalError

    from server.db import migrate
    from server.settings import get_settings

    settings = get_settings()
    if settings.is_sqlite:
        settings.ensure_dirs()
    try:
        migrate.upgrade(settings.database_url, revision)
    except OperationalError as exc:
        reason = " ".join(str(exc.orig).split())
        raise ArtifactLoopError(f"cannot reach the database: {reason}") from None
    console.print(
        f"database at revision {migrate.head_revision()} ({_redact(settings.database_url)})"
    )


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


# -- dataset -----------------------------------------------------------------------------------
@dataset_app.command("add")
@friendly_errors
def dataset_add(
    name: Annotated[str, typer.Argument(help="Name to register the dataset under.")],
    path: Annotated[
        str,
        typer.Argument(
            help="Path of a webKnossos dataset (Zarr3 or WKW), or its URL on the configured "
            "webKnossos server (https://host/datasets/<name>-<id>/view)."
        ),
    ],
    layer: Annotated[str, typer.Option(help="Color layer to read patches from.")] = "color",
    mag: Annotated[str, typer.Option(help="Mag to cut patches at, e.g. 1 or 8-8-1.")] = "1",
    patch: Annotated[int, typer.Option(help="Patch size in pixels at that mag.")] = 140,
    stride: Annotated[
        int | None, typer.Option(help="Grid stride in pixels (default: patch size).")
    ] = None,
    bbox: Annotated[
        str | None,
        typer.Option(help="Restrict to x,y,z,w,h,d (mag-1 voxels); default: the layer's box."),
    ] = None,
    pretrain: Annotated[
        bool,
        typer.Option(
            "--pretrain/--no-pretrain",
            help="Start autoencoder pretraining now (--no-pretrain: later, with "
            "`artifact-loop pretrain` or `artifact-loop up`).",
        ),
    ] = True,
) -> None:
    """Register a webKnossos dataset, compute its normalisation statistics and start
    pretraining (it runs when a worker is up: `artifact-loop up`)."""
    from server.datasets.service import BBox, grid_of, register_dataset
    from server.db.base import session_scope

    box = BBox.parse(bbox) if bbox else None
    runtime = _runtime()
    try:
        with session_scope(runtime.sessions) as session:
            dataset = register_dataset(
                session,
                name=name,
                path=path,
                layer=layer,
                mag=mag,
                patch=patch,
                stride=stride,
                bbox=box,
                stats_sample=runtime.settings.stats_sample_patches,
            )
            grid = grid_of(dataset)
            console.print(
                f"registered dataset {dataset.name!r} (id {dataset.id}): {len(grid):,} patches "
                f"of {dataset.patch_size} px at mag {dataset.mag}, grid {grid.shape[2]} x {grid.shape[1]} "
                f"x {grid.shape[0]} (x, y, z); mean {dataset.norm_mean:.1f}, std {dataset.norm_std:.1f}",
                soft_wrap=True,
            )
            if pretrain:
                job_id, _ = start_dataset_job(
                    session, settings=runtime.settings, kind="pretrain", dataset_id=dataset.id
                )
                console.print(
                    f"started pretrain job {job_id}; {WORKER_HINT}", highlight=False, soft_wrap=True
                )
    finally:
        runtime.close()


@dataset_app.command("list")
@friendly_errors
def dataset_list() -> None:
    """Show the registered datasets with their patch counts."""
    from server.datasets.service import grid_of, list_datasets
    from server.db.base import session_scope

    runtime = _runtime()
    try:
        with session_scope(runtime.sessions) as session:
            datasets = list_datasets(session)
            if not datasets:
                console.print(
                    "no datasets yet: register one with `artifact-loop dataset add NAME PATH`"
                )
                return
            table = Table(
                "id",
                "name",
                "path",
                "layer",
                "mag",
                "patch",
                "stride",
                "patches",
                "bbox (x,y,z,w,h,d)",
            )
            for d in datasets:
                table.add_row(
                    str(d.id),
                    d.name,
                    d.path,
                    d.layer,
                    d.mag,
                    str(d.patch_size),
                    str(d.stride),
                    f"{len(grid_of(d)):,}",
                    ",".join(
                        str(v) for v in (d.bbox_x, d.bbox_y, d.bbox_z, d.bbox_w, d.bbox_h, d.bbox_d)
                    ),
                )
            console.print(table)
    finally:
        runtime.close()


# -- processes ---------------------------------------------------------------------------------
def worker_argv(*, queues: str, name: str | None = None, loglevel: str = "INFO") -> list[str]:
    """Celery worker arguments: GPU work runs one job at a time (solo pool, prefetch 1)."""
    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(wanted) - {"gpu", "io"})
    if not wanted or unknown:
        raise ArtifactLoopError(
            f"unknown queue(s) {', '.join(unknown) or '(none)'}: use gpu, io or gpu,io"
        )
    argv = [
        "worker",
        "-Q",
        ",".join(wanted),
        "-n",
        f"{name or '-'.join(wanted)}@%h",
        "--loglevel",
        loglevel,
    ]
    argv += ["--pool", "solo"] if "gpu" in wanted else ["--concurrency", "2"]
    return argv


@app.command()
@friendly_errors
def worker(
    queues: Annotated[str, typer.Option(help="Queues to consume: gpu, io or gpu,io.")] = "gpu,io",
    name: Annotated[str | None, typer.Option(help="Worker name (default: the queues).")] = None,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
) -> None:
    """Run a worker against the configured broker and database."""
    argv = worker_argv(queues=queues, name=name, loglevel=loglevel)
    _runtime().close()  # fail early with a clear message if the database is not usable
    # the worker process is Celery's own command, as in docker-compose.yml
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "worker.app", *argv])


@app.command()
@friendly_errors
def up(
    port: Annotated[int, typer.Option(help="Port of the web API and pages.")] = 8000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Start the API and one local worker (embedded default: SQLite + filesystem broker).

    Ctrl-C stops both.
    """

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and `kill` both stop cleanly, also when started from a shell that ignores
    # SIGINT for background jobs (an ignored SIGINT is inherited across exec)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)  # the terminal went away

    runtime = _runtime()  # creates/migrates the embedded database
    settings = runtime.settings
    try:
        pending = start_pending(runtime)  # what waits for a worker: this one takes it
    finally:
        runtime.close()
    exe = sys.executable
    procs = {
        "api": subprocess.Popen(
            [exe, "-m", "uvicorn", "server.main:app", "--host", host, "--port", str(port)]
        ),
        "worker": subprocess.Popen(
            [
                exe,
                "-m",
                "server.cli.main",
                "worker",
                "--queues",
                "gpu,io",
                "--name",
                "local",
                "--loglevel",
                "WARNING",
            ]
        ),
    }
    console.print(
        f"artifact-loop is up: http://{host}:{port}/docs (API), /label, /dashboard\n"
        f"database: {_redact(settings.database_url)}  broker: {settings.broker_url}  data: {settings.data_dir}\n"
        "press Ctrl-C to stop"
    )
    for started in pending:
        console.print(f"started {started}" if " job " in started else started, highlight=False)
    try:
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        failed = [name for name, p in procs.items() if p.poll() is not None]
        raise ArtifactLoopError(f"{', '.join(failed)} stopped unexpectedly; see the output above")
    except KeyboardInterrupt:
        console.print("stopping ...")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:  # pragma: no cover - console entry for `python -m server.cli.main`
    app(prog_name="artifact-loop")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
