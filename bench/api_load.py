"""Load test of the annotation API: concurrent simulated annotators against uvicorn + PostgreSQL.

    python bench/api_load.py [--annotators 50] [--seconds 60] [--workers 2] [--think-ms 500]
                             [--replace-at 15] [--repeats 3] [--training]

Creates a scratch database on the PostgreSQL server (ARTIFACT_LOOP_BENCH_PG, default
postgresql://postgres@127.0.0.1:5432/postgres), starts ``uvicorn server.main:app`` with
``--workers``, and lets every annotator loop: lease the next task, label it, look at the next patch for ``--think-ms`` (a fast human takes 1-3 s; 0 makes a
closed loop that measures the saturation throughput). Prints latency
percentiles and throughput per endpoint, and checks that no task was leased twice, no patch
labelled twice, no label lost and no "no tasks" answer given while tasks were open.
``--replace-at`` replaces the batch of proposals that many seconds into the measurement, as a
propose job does, with a new batch overlapping the old one. ``--repeats`` runs it several
times on fresh databases and reports the median and the spread (min-max) of each figure,
``--training`` keeps the loop's own classifier training running beside the annotators, in a
worker process started as ``artifact-loop worker`` starts one (bench/load_training.py),
with the load average of the machine beside each run, and the CPU time per request of the
API workers, PostgreSQL and the load generator itself (aiohttp: it shares the cores with the
server). Writes bench/results/api_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import psutil

os.environ.setdefault("WEBKNOSSOS_SKIP_VERSION_CHECK", "True")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load_setup import (  # noqa: E402
    drop_database,
    make_database,
    replace_half_of_the_batch,
    seed,
    write_dataset,
)
from bench.load_training import TrainingBeside, make_training_dataset, settings_env  # noqa: E402
from server.db import migrate  # noqa: E402
from server.db.base import make_engine, make_sessionmaker, session_scope  # noqa: E402
from server.db.tables import AnnotationTask, Label  # noqa: E402

WARM_UP_S = 5.0  # not measured: connection pools fill, first queries get planned


async def annotator(
    base: str,
    token: str,
    dataset_id: int,
    stop_at: float,
    log: dict[str, list],
    think_s: float,
    warm_until: float,
) -> None:
    # aiohttp, not httpx: the load generator shares the machine's cores with the server, and
    # httpx costs about twice the CPU per request
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base, headers=headers, timeout=timeout) as http:

        async def post(op: str, path: str, body: object = None) -> Any:
            t0 = time.perf_counter()
            try:
                async with http.post(path, json=body) as r:
                    status, retry_after = r.status, r.headers.get("retry-after", 0.5)
                    answer = await r.json() if status == 200 else None
            except (aiohttp.ClientError, TimeoutError) as exc:
                log["errors"].append(f"{op} {type(exc).__name__}")
                return None
            finally:
                if t0 > warm_until:  # connections and caches warm up first
                    log[f"{op}_ms"].append((time.perf_counter() - t0) * 1000)
            if status != 200:
                log["errors"].append(f"{op} {status}")
                # a client backs off as told (503 Retry-After), not in a tight loop
                await asyncio.sleep(min(float(retry_after), 2.0))
                return None
            return answer

        await asyncio.sleep(random.random())  # annotators arrive over the first second
        while time.perf_counter() < stop_at:
            answer = await post("next", f"/api/v1/datasets/{dataset_id}/tasks/next")
            if answer is None:
                continue
            task = answer["task"]
            if task is None:
                log["no_tasks"].append(time.perf_counter())
                await asyncio.sleep(0.5)
                continue
            log["leased"].append(task["id"])
            body = {"label": "clean", "idempotency_key": f"{token[-8:]}-{task['id']}"}
            answer = await post("label", f"/api/v1/tasks/{task['id']}/label", body)
            if answer is not None:
                log["label_ids"].append(answer["id"])
                if time.perf_counter() > warm_until:
                    log["labelled_at"].append(time.perf_counter())
            if think_s:
                await asyncio.sleep(think_s * (0.5 + random.random()))


async def run_load(
    base: str,
    secrets: list[str],
    dataset_id: int,
    seconds: float,
    think_s: float,
    *,
    url: str,
    replace_at: float | None,
    server_pid: int,
    training: TrainingBeside | None = None,
) -> dict:
    log: dict[str, list] = {
        "next_ms": [],
        "label_ms": [],
        "leased": [],
        "label_ids": [],
        "errors": [],
        "no_tasks": [],
        "replacement_s": [],
        "labelled_at": [],
        "cpu_s": [],
    }
    start = time.perf_counter()
    warm_until = start + WARM_UP_S
    stop_at = warm_until + seconds
    jobs = [annotator(base, s, dataset_id, stop_at, log, think_s, warm_until) for s in secrets]
    if replace_at is not None:
        jobs.append(replace_batch(url, dataset_id, at=warm_until + replace_at, log=log))
    jobs.append(count_cpu(server_pid, at=(warm_until, stop_at), log=log))
    if training is not None:
        jobs.append(training.keep(at=(warm_until, stop_at), log=log))
    await asyncio.gather(*jobs)
    log["elapsed_s"] = [time.perf_counter() - warm_until]
    return log


async def replace_batch(url: str, dataset_id: int, *, at: float, log: dict[str, list]) -> None:
    """What a propose job does: a new ranked batch, half of it on patches of the old one."""
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    log["replacement_s"].append(await asyncio.to_thread(replace_half_of_the_batch, url, dataset_id))


def cpu_seconds(server_pid: int) -> tuple[float, float, float]:
    """CPU time so far of the API's worker processes, of PostgreSQL's backends, and of this
    load generator."""
    server = psutil.Process(server_pid)
    api = sum(_busy(p) for p in [server, *server.children(recursive=True)])
    postgres = sum(_busy(p) for p in psutil.process_iter() if _is_postgres(p))
    return api, postgres, time.process_time()


def _busy(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def _is_postgres(proc: psutil.Process) -> bool:
    try:
        return proc.name() in ("postgres", "postmaster")
    except psutil.Error:
        return False


async def count_cpu(server_pid: int, *, at: tuple[float, float], log: dict[str, list]) -> None:
    """CPU seconds spent between the end of the warm-up and the end of the run."""
    await asyncio.sleep(max(0.0, at[0] - time.perf_counter()))
    before = cpu_seconds(server_pid)
    await asyncio.sleep(max(0.0, at[1] - time.perf_counter()))
    after = cpu_seconds(server_pid)
    log["cpu_s"] = [a - b for a, b in zip(after, before, strict=True)]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the API exited during start-up")
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("the API did not come up")


def summarise(values: list[float], elapsed: float) -> dict[str, float]:
    arr = np.asarray(values if values else [np.nan])
    return {
        "count": len(values),
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p90_ms": round(float(np.percentile(arr, 90)), 2),
        "p99_ms": round(float(np.percentile(arr, 99)), 2),
        "rps": round(len(values) / elapsed, 1),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def run_once(args: argparse.Namespace, admin_url: str) -> dict:
    """One run on a fresh database and a fresh API; returns its figures."""
    from sqlalchemy import func, select

    url = make_database(admin_url)
    tmp = Path(tempfile.mkdtemp(prefix="al-bench-"))
    proc = None
    training = None
    try:
        migrate.upgrade(url)
        write_dataset(tmp / "ds")
        dataset_id, secrets = seed(url, tmp / "ds", annotators=args.annotators, tasks=args.tasks)
        port = 8765
        env = {
            **os.environ,
            "ARTIFACT_LOOP_DATABASE_URL": url,
            "ARTIFACT_LOOP_DATA_DIR": str(tmp / "data"),
            "ARTIFACT_LOOP_BROKER_URL": "filesystem://",
            # the bench measures the annotation path, not training triggers
            "ARTIFACT_LOOP_RETRAIN_EVERY": "1000000",
            **(settings_env() if args.training else {}),
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "server.main:app",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=env,
            cwd=ROOT,
        )
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)
        if args.training:
            training = TrainingBeside(
                url=url, base=base, env=env, folder=tmp, dataset=args.training_dataset
            )
            training.start()
        load_before = loadavg()
        log = asyncio.run(
            run_load(
                base,
                secrets,
                dataset_id,
                args.seconds,
                args.think_ms / 1000,
                url=url,
                replace_at=args.replace_at,
                server_pid=proc.pid,
                training=training,
            )
        )
        load_after = loadavg()
        elapsed = log["elapsed_s"][0]
        engine = make_engine(url)
        with session_scope(make_sessionmaker(engine)) as session:
            # the annotators' dataset only (a --training run labels another one)
            stored = set(session.scalars(select(Label.id).where(Label.dataset_id == dataset_id)))
            twice = session.scalar(
                select(func.count()).select_from(
                    select(Label.x, Label.y, Label.z)
                    .where(Label.dataset_id == dataset_id)
                    .group_by(Label.x, Label.y, Label.z)
                    .having(func.count() > 1)
                    .subquery()
                )
            )
            still_open = session.scalar(
                select(func.count(AnnotationTask.id)).where(
                    AnnotationTask.status == "open", AnnotationTask.dataset_id == dataset_id
                )
            )
        engine.dispose()
        leased = Counter(log["leased"])
        labels = summarise(log["label_ms"], elapsed)
        requests = max(1, len(log["next_ms"]) + len(log["label_ms"]))
        api_cpu, postgres_cpu, client_cpu = log["cpu_s"] or [float("nan")] * 3
        return {
            "next": summarise(log["next_ms"], elapsed),
            "label": labels,
            "labels_per_s": round(len(log["labelled_at"]) / elapsed, 1),
            "double_leases": sum(1 for n in leased.values() if n > 1),
            "doubly_labelled_patches": int(twice or 0),
            "lost_labels": len(set(log["label_ids"]) - stored),
            "no_tasks_answers": len(log["no_tasks"]),
            "open_tasks_at_end": int(still_open or 0),
            "labels_stored": len(stored),
            # PostgreSQL's figure counts every backend on the server, other databases' too
            "cpu_ms_per_request": {
                "api": round(api_cpu * 1000 / requests, 2),
                "postgres": round(postgres_cpu * 1000 / requests, 2),
                "load_generator": round(client_cpu * 1000 / requests, 2),
            },
            "replacement_s": [round(v, 3) for v in log["replacement_s"]],
            "errors": dict(Counter(log["errors"])),
            "training": training.figures(elapsed, log) if training else None,
            "seconds": round(elapsed, 1),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        }
    finally:
        if training is not None:
            training.stop()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        drop_database(admin_url, url)
        shutil.rmtree(tmp, ignore_errors=True)


def spread(runs: list[dict], *path: str) -> dict[str, float]:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(float(value))
    return {
        "median": round(float(np.median(values)), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def run_repeats(args: argparse.Namespace, admin_url: str) -> list[dict]:
    """``--repeats`` runs, each on a fresh database and API, printed as they end."""
    runs: list[dict] = []
    scratch = Path(tempfile.mkdtemp(prefix="al-bench-training-"))
    try:
        if args.training:
            args.training_dataset = make_training_dataset(scratch / "training-ds")
        for i in range(args.repeats):
            print(
                f"run {i + 1}/{args.repeats}: {args.annotators} annotators for {args.seconds:.0f} s "
                f"against {args.workers} API workers"
                + (f", batch replaced at {args.replace_at:.0f} s" if args.replace_at else "")
                + (", a training running beside" if args.training else "")
                + f" (load average {loadavg()}) ..."
            )
            run = run_once(args, admin_url)
            runs.append(run)
            for op in ("next", "label"):
                r = run[op]
                print(
                    f"  {op:>5}: p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  "
                    f"{r['rps']:.0f} req/s  ({r['count']} requests)"
                )
            print(
                f"  double leases {run['double_leases']}, doubly labelled patches "
                f"{run['doubly_labelled_patches']}, lost labels {run['lost_labels']}, "
                f"'no tasks' answers {run['no_tasks_answers']}, errors {run['errors'] or 'none'}, "
                f"load average {run['loadavg_before']} -> {run['loadavg_after']}"
            )
            cpu = run["cpu_ms_per_request"]
            print(
                f"  CPU per request: API {cpu['api']:.2f} ms, PostgreSQL {cpu['postgres']:.2f} ms, "
                f"load generator {cpu['load_generator']:.2f} ms"
            )
            if run["training"]:
                t = run["training"]
                print(
                    f"  training beside: running {t['training_running_share']:.0%} of the run, "
                    f"{t['training_cpu_s']:.1f} CPU s, worker nice {t['worker_nice']}, "
                    f"{t['trainings_started']} started"
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--think-ms", type=float, default=500, help="Mean pause between labels")
    parser.add_argument(
        "--replace-at", type=float, default=None, help="Replace the batch this many s in"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--training", action="store_true", help="Keep a classifier training running beside"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "api_load.json")
    args = parser.parse_args()

    admin_url = os.environ.get(
        "ARTIFACT_LOOP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    runs = run_repeats(args, admin_url)
    result = {
        "annotators": args.annotators,
        "seconds": args.seconds,
        "api_workers": args.workers,
        "think_ms": args.think_ms,
        "replace_at_s": args.replace_at,
        "training_beside": args.training,
        "repeats": args.repeats,
        "summary": {
            "next_p50_ms": spread(runs, "next", "p50_ms"),
            "next_p99_ms": spread(runs, "next", "p99_ms"),
            "label_p50_ms": spread(runs, "label", "p50_ms"),
            "label_p99_ms": spread(runs, "label", "p99_ms"),
            "labels_per_s": spread(runs, "labels_per_s"),
            "double_leases": sum(r["double_leases"] for r in runs),
            "doubly_labelled_patches": sum(r["doubly_labelled_patches"] for r in runs),
            "lost_labels": sum(r["lost_labels"] for r in runs),
            "no_tasks_answers": sum(r["no_tasks_answers"] for r in runs),
            **(
                {
                    "training_running_share": spread(runs, "training", "training_running_share"),
                    "training_cpu_s": spread(runs, "training", "training_cpu_s"),
                }
                if args.training
                else {}
            ),
        },
        "runs": runs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "database": "postgresql",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
