"""Latency of one round of the loop on the real stack, at growing dataset sizes.

    python bench/loop_latency.py [--sizes 4k,100k,1m] [--labels 200] [--data /tmp/al-latency]
                                 [--out bench/results/loop_latency.json]

Per size: a fresh PostgreSQL database and Redis database, the API under uvicorn and the two
Celery workers exactly as docker-compose.yml starts them (``gpu``: solo pool; ``io``: two
processes), every setting at its default but ``ARTIFACT_LOOP_RETRAIN_EVERY`` (= ``--labels``).
The dataset is registered through the API, which pretrains the autoencoder, computes its
features once and proposes a cold-start batch. Then ``--labels`` ground-truth labels arrive
through ``POST /datasets/{id}/labels``; the last one triggers the training. Measured: the
time from that label's answer to the first task of the new classifier version being leased
by ``POST /datasets/{id}/tasks/next`` (train -> score candidates -> propose), the steps' own
durations from their jobs, and the peak resident memory of every worker process (sampled
every 0.2 s over the whole run, pretraining included).

Sizes: ``4k`` is ``synth --size small`` (3,920 patches); ``100k`` and ``1m`` are 7,000 px wide
sections, 8 of them written and repeated to 40 and 400 sections (100,000 and 1,000,000
patches; :mod:`server.sim.synth_tiled`). Datasets are kept under ``--data`` for the next run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

os.environ.setdefault("WEBKNOSSOS_SKIP_VERSION_CHECK", "True")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load_setup import drop_database, make_database  # noqa: E402

BIN = Path(sys.executable).parent
SIZES = {"4k": None, "100k": (7000, 40, 8), "1m": (7000, 400, 8)}
# what docker-compose.yml runs
WORKERS = {
    "gpu": ["-Q", "gpu", "--pool", "solo", "--prefetch-multiplier", "1", "-n", "gpu@%h"],
    "io": ["-Q", "io", "--concurrency", "2", "-n", "io@%h"],
}


def dataset_for(size: str, root: Path) -> Path:
    from server.sim.synth import make_synthetic_dataset
    from server.sim.synth_tiled import make_repeated_dataset

    path = root / size
    if (path / "ground_truth.csv").exists():
        return path
    print(f"writing the {size} dataset to {path} ...", flush=True)
    shape = SIZES[size]
    if shape is None:
        make_synthetic_dataset(path, size="small")
    else:
        make_repeated_dataset(path, width=shape[0], depth=shape[1], written=shape[2])
    return path


class MemoryWatch:
    """Peak RSS of every process of each named process tree, sampled in a thread."""

    def __init__(self, every: float = 0.2) -> None:
        self.roots: dict[str, psutil.Process] = {}
        self.peaks: dict[str, dict[int, int]] = {}
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int) -> None:
        self.roots[name] = psutil.Process(pid)
        self.peaks[name] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._thread.join()
        return {
            name: {
                "peak_rss_mb_per_process": round(max(peaks.values(), default=0) / 2**20, 1),
                "processes": len(peaks),
            }
            for name, peaks in self.peaks.items()
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, root in list(self.roots.items()):
                try:
                    procs = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                for p in procs:
                    try:
                        rss = p.memory_info().rss
                    except psutil.Error:
                        continue
                    peaks = self.peaks[name]
                    peaks[p.pid] = max(peaks.get(p.pid, 0), rss)
            self._stop.wait(self.every)


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def wait(predicate: Any, what: str, *, timeout: float, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def idle(http: httpx.Client, ds: int) -> bool:
    for state in ("queued", "running"):
        jobs = http.get("/jobs", params={"dataset_id": ds, "state": state, "top_level": False})
        if jobs.json()["total"]:
            return False
    return True


def pick_labels(dataset: Path, n: int, *, seed: int) -> list[dict[str, Any]]:
    """``n`` ground-truth patches, a quarter of them artifacts (as a few rounds find them)."""
    with (dataset / "ground_truth.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(seed)
    positive = [i for i, r in enumerate(rows) if r["label"] == "artifact"]
    negative = [i for i, r in enumerate(rows) if r["label"] != "artifact"]
    k = n // 4
    chosen = [*rng.choice(positive, size=k, replace=False), *rng.choice(negative, n - k, False)]
    rng.shuffle(chosen)
    return [
        {"x": int(rows[i]["x"]), "y": int(rows[i]["y"]), "z": int(rows[i]["z"]),
         "label": rows[i]["label"]}
        for i in chosen
    ]  # fmt: skip


def durations(
    http: httpx.Client,
    ds: int,
    since_job: int,
    kinds: tuple[str, ...] = ("train", "score", "score_chunk", "propose"),
) -> dict[str, Any]:
    """Seconds each step of the round took, from its jobs (chunks: first start to last end),
    and how many candidates the classifier scored."""
    jobs = http.get("/jobs", params={"dataset_id": ds, "top_level": False, "limit": 1000}).json()[
        "items"
    ]
    out: dict[str, Any] = {}
    scored = [j for j in jobs if j["kind"] == "score" and j["id"] >= since_job]
    if scored:
        out["patches_scored"] = scored[0]["result"].get("patches")
        out["score_chunks"] = scored[0]["result"].get("chunks")
    for kind in kinds:
        mine = [j for j in jobs if j["kind"] == kind and j["id"] >= since_job and j["finished_at"]]
        if mine:
            first = min(datetime.fromisoformat(j["started_at"]) for j in mine)
            last = max(datetime.fromisoformat(j["finished_at"]) for j in mine)
            out[f"{kind}_s"] = round((last - first).total_seconds(), 2)
    return out


def run_size(size: str, args: argparse.Namespace, admin_url: str) -> dict[str, Any]:
    from server.auth import create_token
    from server.db import migrate
    from server.db.base import make_engine, make_sessionmaker, session_scope

    dataset = dataset_for(size, args.data)
    url = make_database(admin_url)
    work = args.data / f"run-{size}"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    subprocess.run(
        ["redis-cli", "-n", str(args.redis_db), "flushdb"], check=True, capture_output=True
    )
    try:
        migrate.upgrade(url)
        engine = make_engine(url)
        with session_scope(make_sessionmaker(engine)) as session:
            _, admin = create_token(session, name="bench-admin", role="admin")
            _, annotator = create_token(session, name="bench-annotator", role="annotator")
        engine.dispose()
        env = {
            **os.environ,
            "ARTIFACT_LOOP_DATABASE_URL": url,
            "ARTIFACT_LOOP_BROKER_URL": redis_url,
            "ARTIFACT_LOOP_DATA_DIR": str(work / "data"),
            "ARTIFACT_LOOP_RETRAIN_EVERY": str(args.labels),
            "PYTHONUNBUFFERED": "1",
        }
        memory = MemoryWatch()
        with ExitStack() as stack:
            port = args.port
            api = start(
                [str(BIN / "uvicorn"), "server.main:app", "--port", str(port), "--workers", "2"],
                env,
                work / "api.log",
            )
            stack.callback(stop, api)
            for name, extra in WORKERS.items():
                proc = start(
                    [
                        str(BIN / "celery"),
                        "-A",
                        "worker.app",
                        "worker",
                        *extra,
                        "--loglevel",
                        "INFO",
                    ],
                    env,
                    work / f"worker-{name}.log",
                )
                stack.callback(stop, proc)
                memory.watch(f"worker-{name}", proc.pid)
            memory.start()
            base = f"http://127.0.0.1:{port}/api/v1"
            http = stack.enter_context(
                httpx.Client(
                    base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=60
                )
            )
            wait(lambda: _up(http), "the API", timeout=60)
            t = time.perf_counter()
            ds = http.post("/datasets", json={"name": size, "path": str(dataset)}).json()["id"]
            patches = http.get(f"/datasets/{ds}").json()["patch_count"]
            print(f"{size}: {patches:,} patches; pretraining and the autoencoder's features ...",
                  flush=True)  # fmt: skip
            wait(lambda: http.get(f"/datasets/{ds}").json()["active_models"]["ae"], "the AE",
                 timeout=args.timeout)  # fmt: skip
            wait(lambda: idle(http, ds), "the cold start", timeout=args.timeout, every=1.0)
            setup_s = time.perf_counter() - t
            setup = durations(http, ds, 0, kinds=("pretrain", "score", "propose"))
            print(f"{size}: set up in {setup_s:.0f} s: {setup}", flush=True)
            labels = pick_labels(dataset, args.labels, seed=args.seed)
            for body in labels[:-1]:
                r = http.post(f"/datasets/{ds}/labels", json=body)
                r.raise_for_status()
            last_job = max(
                (j["id"] for j in http.get("/jobs", params={"top_level": False}).json()["items"]),
                default=0,
            )
            print(f"{size}: {args.labels - 1} labels in; the last one starts the round", flush=True)
            t0 = time.perf_counter()
            http.post(f"/datasets/{ds}/labels", json=labels[-1]).raise_for_status()
            labelled = time.perf_counter()
            worker = httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {annotator}"}, timeout=60
            )
            stack.callback(worker.close)
            version = wait(
                lambda: _new_classifier_task(worker, http, ds), "the new proposals",
                timeout=args.timeout,
            )  # fmt: skip
            latency = time.perf_counter() - t0
            wait(lambda: idle(http, ds), "the round's last jobs", timeout=args.timeout)
            steps = durations(http, ds, last_job + 1)
        peaks = memory.stop()
    finally:
        drop_database(admin_url, url)
    result = {
        "size": size,
        "patches": patches,
        "labels": args.labels,
        "label_to_leaseable_proposal_s": round(latency, 2),
        "last_label_request_s": round(labelled - t0, 3),
        "classifier_version": version,
        "steps": steps,
        "setup_s": round(setup_s, 1),
        "setup_steps": setup,
        "workers": peaks,
    }
    print(json.dumps(result, indent=1), flush=True)
    return result


def _up(http: httpx.Client) -> bool:
    try:
        return http.get("/health").status_code == 200
    except httpx.HTTPError:
        return False


def _new_classifier_task(worker: httpx.Client, http: httpx.Client, ds: int) -> int | None:
    """Lease the next task; the version that proposed it, once that is a classifier."""
    task = worker.post(f"/datasets/{ds}/tasks/next").json().get("task")
    if task is None or task["model_version_id"] is None:
        return None
    version = task["model_version_id"]
    if http.get(f"/models/{version}").json()["kind"] != "classifier":
        worker.post(f"/tasks/{task['id']}/release")
        return None
    return int(version)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4k,100k,1m")
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path("/tmp/al-latency"))
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--redis-db", type=int, default=11)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "loop_latency.json"
    )
    args = parser.parse_args()
    admin_url = os.environ.get(
        "ARTIFACT_LOOP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = set(sizes) - set(SIZES)
    if unknown:
        raise SystemExit(f"unknown sizes {sorted(unknown)}: use {', '.join(SIZES)}")
    args.data.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for size in sizes:
        load = os.getloadavg()
        run = run_size(size, args, admin_url)
        run["load_average_before"] = [round(v, 2) for v in load]
        runs.append(run)
        write(args.out, runs)  # what is measured is kept if a later size is cut short
    print(f"wrote {args.out}")


def write(path: Path, runs: list[dict[str, Any]]) -> None:
    by = {r["size"]: r for r in runs}
    summary: dict[str, Any] = {}
    if "100k" in by and "1m" in by:
        summary["ratio_1m_to_100k"] = round(
            by["1m"]["label_to_leaseable_proposal_s"] / by["100k"]["label_to_leaseable_proposal_s"],
            3,
        )
    summary["peak_worker_rss_mb"] = max(
        w["peak_rss_mb_per_process"] for r in runs for w in r["workers"].values()
    )
    out = {
        "runs": runs,
        "summary": summary,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
