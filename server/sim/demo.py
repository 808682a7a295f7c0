"""``artifact-loop demo``: the loop on the embedded default with a simulated annotator.

Makes a small synthetic dataset (or takes one with a ``ground_truth.csv``), starts the API and
one worker, registers the dataset (which starts pretraining), then plays an annotator who
answers from the ground truth over HTTP for a few rounds, and shows the model versions.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from server.errors import ArtifactLoopError, InvalidInput

# Small models so a laptop CPU runs a round in well under a minute.
DEMO_SETTINGS = {
    "ARTIFACT_LOOP_PRETRAIN_PATCHES": "1500",
    "ARTIFACT_LOOP_PRETRAIN_EPOCHS": "4",
    "ARTIFACT_LOOP_TRAIN_EPOCHS": "40",
    "ARTIFACT_LOOP_RETRAIN_EVERY": "50",
    "ARTIFACT_LOOP_BATCH_SIZE": "50",
    "ARTIFACT_LOOP_AUDIT_SIZE": "150",
}


def run_demo(
    *,
    console: Console,
    data_dir: Path,
    dataset: Path | None,
    rounds: int,
    port: int,
    keep_serving: bool,
    predict: bool = True,
) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    if dataset is None:
        dataset = data_dir / "demo-dataset"
        if not (dataset / "ground_truth.csv").exists():
            from server.sim.synth import make_synthetic_dataset

            with console.status("making a small synthetic dataset ..."):
                summary = make_synthetic_dataset(dataset, seed=0, size="small", artifact_rate=2.0)
            console.print(
                f"synthetic dataset: {summary.n_patches:,} patches, "
                f"{summary.n_artifact_patches} with artifacts ({dataset})"
            )
    truth = _ground_truth(dataset)
    env = {
        **os.environ,
        **{k: v for k, v in DEMO_SETTINGS.items() if k not in os.environ},
        "ARTIFACT_LOOP_DATA_DIR": str(data_dir),
        "WEBKNOSSOS_SKIP_VERSION_CHECK": "True",
    }
    env.pop("ARTIFACT_LOOP_DATABASE_URL", None)
    env.pop("ARTIFACT_LOOP_BROKER_URL", None)
    admin, annotator = _tokens(env)
    procs = _start(env, port=port, log_dir=data_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(base, procs)
        http = httpx.Client(base_url=f"{base}/api/v1", headers=admin, timeout=60)
        dataset_id = _register(http, dataset)
        sim = httpx.Client(base_url=f"{base}/api/v1", headers=annotator, timeout=60)
        _play(console, http, sim, dataset_id=dataset_id, truth=truth, rounds=rounds, procs=procs)
        _show_versions(console, http, dataset_id)
        if predict:
            _predict(console, http, dataset_id=dataset_id, procs=procs)
        console.print(
            f"\nlabeling page: {base}/label   dashboard: {base}/dashboard   API: {base}/docs\n"
            f"admin token (paste it into the pages): {admin['Authorization'].split()[1]}"
        )
        if keep_serving:
            console.print("serving; press Ctrl-C to stop")
            while all(p.poll() is None for p in procs.values()):
                time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping ...")
    finally:
        _stop(procs)


def _ground_truth(dataset: Path) -> dict[tuple[int, int, int], tuple[str, str]]:
    path = dataset / "ground_truth.csv"
    if not path.exists():
        raise InvalidInput(f"{dataset} has no ground_truth.csv to answer from")
    with path.open() as fh:
        return {
            (int(r["x"]), int(r["y"]), int(r["z"])): (r["label"], r.get("type") or "")
            for r in csv.DictReader(fh)
        }


def _tokens(env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    from server.auth import create_token
    from server.db.base import session_scope
    from server.runtime import Runtime
    from server.settings import Settings

    rt = Runtime.start(Settings(data_dir=Path(env["ARTIFACT_LOOP_DATA_DIR"])))
    try:
        with session_scope(rt.sessions) as session:
            _, admin = create_token(session, name="demo-admin", role="admin")
            _, annotator = create_token(session, name="simulated-annotator", role="annotator")
    finally:
        rt.close()
    return {"Authorization": f"Bearer {admin}"}, {"Authorization": f"Bearer {annotator}"}


def _start(env: dict[str, str], *, port: int, log_dir: Path) -> dict[str, subprocess.Popen[bytes]]:
    exe = sys.executable
    logs = {name: (log_dir / f"demo-{name}.log").open("ab") for name in ("api", "worker")}
    return {
        "api": subprocess.Popen(
            [exe, "-m", "uvicorn", "server.main:app", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=logs["api"],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
        "worker": subprocess.Popen(
            [
                exe,
                "-m",
                "celery",
                "-A",
                "worker.app",
                "worker",
                "-Q",
                "gpu,io",
                "--pool",
                "solo",
                "-n",
                "demo@%h",
                "--loglevel",
                "INFO",
            ],
            env=env,
            stdout=logs["worker"],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
    }


def _wait_for(base: str, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        _check_alive(procs)
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise ArtifactLoopError("the API did not come up; see demo-api.log in the data dir")


def _check_alive(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    dead = [name for name, p in procs.items() if p.poll() is not None]
    if dead:
        raise ArtifactLoopError(
            f"{', '.join(dead)} stopped; see demo-{dead[0]}.log in the data dir"
        )


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for p in procs.values():
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def _register(http: httpx.Client, dataset: Path) -> int:
    existing = http.get("/datasets", params={"limit": 1000}).json()["items"]
    for d in existing:
        if d["path"] == str(dataset):
            return int(d["id"])
    r = http.post("/datasets", json={"name": f"demo-{len(existing) + 1}", "path": str(dataset)})
    if r.status_code != 201:
        raise ArtifactLoopError(f"could not register {dataset}: {r.json().get('detail')}")
    return int(r.json()["id"])


def _play(
    console: Console,
    http: httpx.Client,
    sim: httpx.Client,
    *,
    dataset_id: int,
    truth: dict[tuple[int, int, int], tuple[str, str]],
    rounds: int,
    procs: dict[str, subprocess.Popen[bytes]],
) -> None:
    from rich.progress import BarColumn, Progress, TextColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    ) as progress:
        for round_no in range(1, rounds + 1):
            bar = progress.add_task(
                f"round {round_no}/{rounds}: waiting for proposals", total=None, info=""
            )
            known = _ready_versions(http, dataset_id)
            _wait(lambda: _open_tasks(sim, dataset_id) > 0, http, dataset_id, progress, bar, procs)
            labelled = 0
            progress.update(
                bar, description=f"round {round_no}/{rounds}: simulated annotator labelling"
            )
            while True:
                task = sim.post(f"/datasets/{dataset_id}/tasks/next").json()["task"]
                if task is None:
                    break
                verdict, kind = truth.get((task["x"], task["y"], task["z"]), ("clean", ""))
                body = {"label": verdict, "idempotency_key": f"demo-{task['id']}"}
                if verdict == "artifact" and kind:
                    body["artifact_type"] = kind
                sim.post(f"/tasks/{task['id']}/label", json=body)
                labelled += 1
                progress.update(bar, info=f"{labelled} labels")
            if round_no == rounds:
                progress.update(bar, total=1, completed=1)
                break
            # the labels trigger training; wait for a new classifier and its proposals
            progress.update(bar, description=f"round {round_no}/{rounds}: training and scoring")
            http.post(f"/datasets/{dataset_id}/jobs", json={"kind": "train"})
            _wait(
                lambda known=known: _ready_versions(http, dataset_id) > known,
                http,
                dataset_id,
                progress,
                bar,
                procs,
            )
            progress.update(bar, total=1, completed=1)
        progress.add_task("final training", total=None, info="")
        known = _ready_versions(http, dataset_id)
        http.post(f"/datasets/{dataset_id}/jobs", json={"kind": "train"})
        _wait(
            lambda known=known: _ready_versions(http, dataset_id) > known,
            http,
            dataset_id,
            progress,
            None,
            procs,
        )


def _open_tasks(sim: httpx.Client, dataset_id: int) -> int:
    return int(
        sim.get(f"/datasets/{dataset_id}/tasks", params={"status": "open", "limit": 1}).json()[
            "total"
        ]
    )


def _busy(http: httpx.Client, dataset_id: int) -> bool:
    """Jobs under way, looked at twice: a finished training may start the next one."""
    for _ in range(2):
        jobs = http.get("/jobs", params={"dataset_id": dataset_id, "limit": 20}).json()["items"]
        if any(j["state"] in ("queued", "running") for j in jobs):
            return True
        time.sleep(2.0)
    return False


def _ready_versions(http: httpx.Client, dataset_id: int) -> int:
    items = http.get(
        f"/datasets/{dataset_id}/models", params={"kind": "classifier", "limit": 1000}
    ).json()["items"]
    return sum(1 for v in items if v["status"] == "ready")


def _wait(done, http, dataset_id, progress, bar, procs, timeout: float = 900) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not done():
        _check_alive(procs)
        jobs = http.get("/jobs", params={"dataset_id": dataset_id, "limit": 5}).json()["items"]
        failed = [j for j in jobs if j["state"] == "failed"]
        if failed:
            raise ArtifactLoopError(f"{failed[0]['kind']} job failed: {failed[0]['error']}")
        running = [j for j in jobs if j["state"] == "running"]
        if bar is not None and running:
            j = running[0]
            progress.update(bar, info=f"{j['kind']}: {j['message']} ({j['progress']:.0%})")
        if time.monotonic() > deadline:
            raise ArtifactLoopError("the loop made no progress for 15 minutes")
        time.sleep(1.0)


def _predict(
    console: Console,
    http: httpx.Client,
    *,
    dataset_id: int,
    procs: dict[str, subprocess.Popen[bytes]],
) -> None:
    """The active classifier's dense map over the whole dataset, as webKnossos layers."""
    job = http.post(f"/datasets/{dataset_id}/jobs", json={"kind": "predict"}).json()["job"]
    with console.status("predicting the whole dataset ...") as status:
        deadline = time.monotonic() + 1800
        while True:
            _check_alive(procs)
            j = http.get(f"/jobs/{job['id']}").json()
            if j["state"] in ("succeeded", "failed", "cancelled"):
                break
            status.update(f"predicting the whole dataset: {j['message']}")
            if time.monotonic() > deadline:
                raise ArtifactLoopError("the prediction took longer than 30 minutes")
            time.sleep(1.0)
    if j["state"] != "succeeded":
        raise ArtifactLoopError(f"predict job {j['id']} {j['state']}: {j['error']}")
    r = j["result"]
    gt = r.get("ground_truth") or {}
    console.print(
        f"\nprediction: {r['clusters']} artifact clusters, {r['artifact_cells']:,} of "
        f"{r['cells']:,} cells above p={r['threshold']:.2f}"
        + (
            f"; patch-level PR-AUC {gt['pr_auc']:.3f} over {gt['patches']:,} patches"
            if gt.get("pr_auc") is not None
            else ""
        )
        + f"\n  webKnossos dataset with layers artifact_prob + artifact_mask: {r['output']}"
        f"\n  review the clusters in webKnossos: {r['nml']}"
    )


def _show_versions(console: Console, http: httpx.Client, dataset_id: int) -> None:
    items = http.get(f"/datasets/{dataset_id}/models", params={"limit": 1000}).json()["items"]
    table = Table(
        "version",
        "kind",
        "labels",
        "audit n",
        "F1",
        "PR-AUC",
        "P@R0.9",
        "active",
        title="model versions (metrics on the audit set)",
    )
    for v in sorted(items, key=lambda v: v["id"]):
        if v["status"] != "ready":
            continue  # a training cut short when the demo stopped
        a = v["metrics"].get("audit") or {}
        fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        table.add_row(
            str(v["id"]),
            "autoencoder" if v["kind"] == "ae" else "classifier",
            str(v["label_count"]) if v["kind"] == "classifier" else "-",
            str(a.get("n", "-")),
            fmt(a.get("f1")),
            fmt(a.get("pr_auc")),
            fmt(a.get("precision_at_recall_0.9")),
            "yes" if v["active"] else "",
        )
    console.print(table)
