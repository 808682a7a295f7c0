"""``artifact-loop demo``: the loop on the embedded default with a simulated annotator.

Makes a small synthetic dataset (or takes one with a ``ground_truth.csv``), starts the API and
one worker, registers the dataset (which starts pretraining), then plays an annotator who
answers from the ground truth over HTTP for a few rounds (one automatic training each), ends
with a dense prediction, shows the model versions and writes a results file.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from rich import box
from rich.console import Console
from rich.table import Table

from server.auth import create_token
from server.db.base import session_scope
from server.errors import ArtifactLoopError
from server.labels.truth import read_truth
from server.runtime import Runtime
from server.settings import Settings
from server.sim import demo_play, demo_results
from server.sim.synth import make_synthetic_dataset

# Small models so a laptop CPU runs a round in well under a minute.
DEMO_SETTINGS = {
    "ARTIFACT_LOOP_PRETRAIN_PATCHES": "1500",
    "ARTIFACT_LOOP_PRETRAIN_EPOCHS": "4",
    "ARTIFACT_LOOP_TRAIN_EPOCHS": "40",
    "ARTIFACT_LOOP_RETRAIN_EVERY": "50",
    "ARTIFACT_LOOP_BATCH_SIZE": "50",
    "ARTIFACT_LOOP_AUDIT_SIZE": "150",
}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def run_demo(
    *,
    console: Console,
    data_dir: Path,
    dataset: Path | None,
    rounds: int,
    port: int,
    keep_serving: bool,
    predict: bool = True,
    results_path: Path | None = None,
) -> dict[str, Any] | None:
    """Run the demo; the results (also written to ``results_path``), or ``None`` when stopped."""
    started = time.monotonic()
    load_start = demo_results.load_average()
    data_dir.mkdir(parents=True, exist_ok=True)
    results_path = results_path or data_dir / "demo-results.json"
    with _stop_on_signals():
        dataset = dataset or _synthetic_dataset(console, data_dir)
        truth = _truth(dataset)
        env = {
            **os.environ,
            **{k: v for k, v in DEMO_SETTINGS.items() if k not in os.environ},
            "ARTIFACT_LOOP_DATA_DIR": str(data_dir),
            "WEBKNOSSOS_SKIP_VERSION_CHECK": "True",
        }
        env.pop("ARTIFACT_LOOP_DATABASE_URL", None)
        env.pop("ARTIFACT_LOOP_BROKER_URL", None)
        admin, annotator = _tokens(data_dir)
        procs: demo_play.Procs = {}
        try:
            procs.update(_start(env, port=port, log_dir=data_dir))
            base = f"http://127.0.0.1:{port}"
            _wait_for_api(base, procs)
            api = demo_play.DemoClient(base, admin, annotator, procs)
            dataset_id = _register(api, dataset)
            round_size = int(env["ARTIFACT_LOOP_RETRAIN_EVERY"])
            log = demo_play.play(
                console,
                api,
                dataset_id=dataset_id,
                truth=truth,
                rounds=rounds,
                round_size=round_size,
            )
            prediction = demo_play.predict(console, api, dataset_id=dataset_id) if predict else None
            with console.status("waiting for work in flight ..."):
                demo_play.Waiter(api, dataset_id, progress=None).idle()
            results = {
                "version": _package_version(),
                "code_fingerprint": demo_results.code_fingerprint(),
                "rounds": rounds,
                "round_size": round_size,
                "settings": {k: env[k] for k in DEMO_SETTINGS},
                "dataset": str(dataset),
                "log": log,
                "versions": demo_results.version_rows(api.versions(dataset_id)),
                "prediction": prediction,
                "server_errors": api.server_errors,
                "seconds_to_urls": round(time.monotonic() - started, 1),
                "load_average": {"start": load_start, "end": demo_results.load_average()},
                "machine": demo_results.machine(),
            }
            demo_results.write_results(results_path, results)
            _show(console, results, base=base, admin=admin, results_path=results_path)
            if keep_serving:
                console.print("serving; press Ctrl-C to stop")
                while all(p.poll() is None for p in procs.values()):
                    time.sleep(0.5)
            return results
        except KeyboardInterrupt:
            console.print("stopping ...")
            return None
        finally:
            _stop(procs)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP (the terminal closed) stop the demo like Ctrl-C, so every process
    it started is stopped too; a second signal while stopping is ignored."""

    def stop(signum: int, frame: FrameType | None) -> None:
        for sig in (*STOP_SIGNALS, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _synthetic_dataset(console: Console, data_dir: Path) -> Path:
    dataset = data_dir / "demo-dataset"
    if not (dataset / "ground_truth.csv").exists():
        with console.status("making a small synthetic dataset ..."):
            summary = make_synthetic_dataset(dataset, seed=0, size="small", artifact_rate=2.0)
        console.print(
            f"synthetic dataset: {summary.n_patches:,} patches, "
            f"{summary.n_artifact_patches} with artifacts ({dataset})",
            soft_wrap=True,
        )
    return dataset


def _truth(dataset: Path) -> demo_play.Truth:
    return {row.origin: row for row in read_truth(dataset)}


def _package_version() -> str:
    try:
        return version("artifact-loop")
    except PackageNotFoundError:
        return "unknown"


def _tokens(data_dir: Path) -> tuple[str, str]:
    rt = Runtime.start(Settings(data_dir=data_dir, database_url="", broker_url=""))
    try:
        with session_scope(rt.sessions) as session:
            _, admin = create_token(session, name="demo-admin", role="admin")
            _, annotator = create_token(session, name="simulated-annotator", role="annotator")
    finally:
        rt.close()
    return admin, annotator


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: a child gets SIGTERM when the demo dies without cleaning up (SIGKILL)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start(env: dict[str, str], *, port: int, log_dir: Path) -> demo_play.Procs:
    exe = sys.executable
    commands = {
        "api": [
            exe,
            "-m",
            "uvicorn",
            "server.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        "worker": [
            *(exe, "-m", "celery", "-A", "worker.app", "worker", "-Q", "gpu,io"),
            *("--pool", "solo", "-n", "demo@%h", "--loglevel", "INFO"),
        ],
    }
    procs: demo_play.Procs = {}
    for name, command in commands.items():
        with (log_dir / f"demo-{name}.log").open("ab") as log:
            procs[name] = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches only the demo
                preexec_fn=_die_with_parent,
            )
    return procs


def _wait_for_api(base: str, procs: demo_play.Procs) -> None:
    deadline = time.monotonic() + 300  # a loaded machine imports torch slowly
    while time.monotonic() < deadline:
        demo_play.check_alive(procs)
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise ArtifactLoopError("the API did not come up; see demo-api.log in the data dir")


def _stop(procs: demo_play.Procs) -> None:
    """SIGTERM to each process group, then SIGKILL to what is left after 30 s."""
    for p in procs.values():
        if p.poll() is None:
            _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for p in procs.values():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait(timeout=30)
    for p in procs.values():  # anything the processes started themselves
        _signal_group(p, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _register(api: demo_play.DemoClient, dataset: Path) -> int:
    existing = api.json("GET", "/datasets", params={"limit": 1000})["items"]
    for d in existing:
        if d["path"] == str(dataset):
            return int(d["id"])
    r = api.call(
        "POST", "/datasets", json={"name": f"demo-{len(existing) + 1}", "path": str(dataset)}
    )
    if r.status_code != 201:
        raise ArtifactLoopError(f"could not register {dataset}: {r.json().get('detail')}")
    return int(r.json()["id"])


def _show(
    console: Console, results: dict[str, Any], *, base: str, admin: str, results_path: Path
) -> None:
    used = (results.get("prediction") or {}).get("model_version_id")
    table = Table(
        *("version", "kind", "labels", "audit n", "F1", "PR-AUC", "P@R0.9", "note"),
        title="model versions (metrics on the labelled audit patches; audit n: patches (artifacts))",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    reasons = []
    for v in results["versions"]:
        note = ", ".join(
            word for word, yes in (("active", v["active"]), ("map", v["id"] == used)) if yes
        )
        size, *metrics = demo_results.audit_cells(v)
        if v["kind"] == "classifier" and metrics[0] == metrics[1] == metrics[2]:
            reasons.append(f"version {v['id']}: {metrics[0]}")  # not measured: words, once
            metrics = ["not measured", "-", "-"]
        table.add_row(
            str(v["id"]),
            v["kind"],
            "-" if v["labels"] is None else str(v["labels"]),
            size,
            *metrics,
            note,
        )
    console.print(table)
    if reasons:
        console.print("not measured: " + "; ".join(reasons), highlight=False, soft_wrap=True)
    load = results["load_average"]
    console.print(
        "map: the version the prediction used\n"
        f"trainings per round: {', '.join(str(r['trainings']) for r in results['log'])}; "
        f"server errors seen: {len(results['server_errors'])}; results: {results_path}\n"
        f"took {results['seconds_to_urls']:.0f} s on {results['machine']['cpus']} cores "
        f"(load average {load['start']} at the start, {load['end']} at the end)\n"
        f"\nlabeling page: {base}/label   dashboard: {base}/dashboard   API: {base}/docs\n"
        f"admin token (paste it into the pages): {admin}",
        soft_wrap=True,
        highlight=False,
    )
