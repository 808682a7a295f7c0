"""Load test of the annotation API: concurrent simulated annotators against uvicorn + PostgreSQL.

    python bench/api_load.py [--annotators 50] [--seconds 60] [--workers 2] [--think-ms 500]
                             [--replace-at 15] [--repeats 3]

Creates a scratch database on the PostgreSQL server (ARTIFACT_LOOP_BENCH_PG, default
postgresql://postgres@127.0.0.1:5432/postgres), starts ``uvicorn server.main:app`` with
``--workers``, and lets every annotator loop: lease the next task, label it, look at the next patch for ``--think-ms`` (a fast human takes 1-3 s; 0 makes a
closed loop that measures the saturation throughput). Prints latency
percentiles and throughput per endpoint, and checks that no task was leased twice, no patch
labelled twice, no label lost and no "no tasks" answer given while tasks were open.
``--replace-at`` replaces the batch of proposals that many seconds into the measurement, as a
propose job does, with a new batch overlapping the old one. ``--repeats`` runs it several
times on fresh databases and reports the median and the spread (min-max) of each figure,
with the load average of the machine beside each run. Writes bench/results/api_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

os.environ.setdefault("WEBKNOSSOS_SKIP_VERSION_CHECK", "True")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.auth import create_token  # noqa: E402
from server.datasets.service import grid_of, register_dataset  # noqa: E402
from server.db import migrate  # noqa: E402
from server.db.base import make_engine, make_sessionmaker, session_scope  # noqa: E402
from server.db.tables import AnnotationTask, Label  # noqa: E402

WARM_UP_S = 5.0  # not measured: connection pools fill, first queries get planned
PATCH = 28  # small patches: 10,000 distinct ones on a 1400 x 1400 x 4 dataset, one task each


def make_database(admin_url: str) -> str:
    import psycopg

    name = f"al_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def write_dataset(path: Path) -> None:
    from server.webknossos.lib import wk

    data = np.random.default_rng(0).integers(0, 256, size=(1400, 1400, 4), dtype=np.uint8)
    ds = wk.Dataset(path, voxel_size=(32, 32, 35))
    layer = ds.add_layer("color", wk.COLOR_CATEGORY, dtype="uint8", data_format="zarr3")
    layer.add_mag(1, chunk_shape=(32, 32, 32), shard_shape=(512, 512, 32)).write(
        data, absolute_offset=(0, 0, 0), allow_resize=True
    )


def seed(url: str, dataset_path: Path, *, annotators: int, tasks: int) -> tuple[int, list[str]]:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    try:
        with session_scope(sessions) as session:
            dataset = register_dataset(
                session, name="bench", path=str(dataset_path), patch=PATCH, stats_sample=8
            )
            grid = grid_of(dataset)
            tasks = min(tasks, len(grid))
            origins = grid.origins(np.arange(tasks))
            session.add_all(
                AnnotationTask(
                    dataset_id=dataset.id,
                    kind="proposal",
                    grid_index=i,
                    x=int(origins[i][0]),
                    y=int(origins[i][1]),
                    z=int(origins[i][2]),
                    w=PATCH,
                    h=PATCH,
                    rank=i,
                    reason="uncertain",
                    status="open",
                )
                for i in range(tasks)
            )
            secrets = [
                create_token(session, name=f"annotator-{i:02d}", role="annotator")[1]
                for i in range(annotators)
            ]
            return dataset.id, secrets
    finally:
        engine.dispose()


async def annotator(
    base: str,
    token: str,
    dataset_id: int,
    stop_at: float,
    log: dict[str, list],
    think_s: float,
    warm_until: float,
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
        # annotators arrive over the first second, not in one burst
        await asyncio.sleep(random.random())
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            r = await http.post(f"/api/v1/datasets/{dataset_id}/tasks/next")
            if t0 > warm_until:  # connections and caches warm up first
                log["next_ms"].append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                log["errors"].append(f"next {r.status_code}")
                continue
            task = r.json()["task"]
            if task is None:
                log["no_tasks"].append(time.perf_counter())
                await asyncio.sleep(0.5)
                continue
            log["leased"].append(task["id"])
            body = {"label": "clean", "idempotency_key": f"{token[-8:]}-{task['id']}"}
            t0 = time.perf_counter()
            r = await http.post(f"/api/v1/tasks/{task['id']}/label", json=body)
            if t0 > warm_until:
                log["label_ms"].append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                log["errors"].append(f"label {r.status_code}")
                continue
            log["label_ids"].append(r.json()["id"])
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
) -> dict:
    log: dict[str, list] = {
        "next_ms": [],
        "label_ms": [],
        "leased": [],
        "label_ids": [],
        "errors": [],
        "no_tasks": [],
        "replacement_s": [],
    }
    start = time.perf_counter()
    warm_until = start + WARM_UP_S
    stop_at = warm_until + seconds
    jobs = [annotator(base, s, dataset_id, stop_at, log, think_s, warm_until) for s in secrets]
    if replace_at is not None:
        jobs.append(replace_batch(url, dataset_id, at=warm_until + replace_at, log=log))
    await asyncio.gather(*jobs)
    log["elapsed_s"] = [time.perf_counter() - warm_until]
    return log


async def replace_batch(url: str, dataset_id: int, *, at: float, log: dict[str, list]) -> None:
    """What a propose job does: a new ranked batch, half of it on patches of the old one."""
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    log["replacement_s"].append(await asyncio.to_thread(_replace, url, dataset_id))


def _replace(url: str, dataset_id: int) -> float:
    from server.annotation.proposals import replace_proposals
    from server.datasets.service import get_dataset
    from server.db.base import write_transaction

    engine = make_engine(url)
    try:
        t0 = time.perf_counter()
        with write_transaction(make_sessionmaker(engine)) as session:
            dataset = get_dataset(session, dataset_id)
            grid = grid_of(dataset)
            rng = np.random.default_rng(1)
            picks = [
                {"index": int(i), "reason": "uncertain", "score": 1.0}
                for i in rng.permutation(len(grid))[: len(grid) // 2]
            ]
            replace_proposals(
                session, dataset=dataset, grid=grid, model_version_id=None, job_id=None, picks=picks
            )
        return time.perf_counter() - t0
    finally:
        engine.dispose()


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
    arr = np.asarray(values)
    return {
        "count": int(arr.size),
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p90_ms": round(float(np.percentile(arr, 90)), 2),
        "p99_ms": round(float(np.percentile(arr, 99)), 2),
        "rps": round(arr.size / elapsed, 1),
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
            )
        )
        load_after = loadavg()
        elapsed = log["elapsed_s"][0]
        engine = make_engine(url)
        with session_scope(make_sessionmaker(engine)) as session:
            stored = set(session.scalars(select(Label.id)))
            twice = session.scalar(
                select(func.count()).select_from(
                    select(Label.x, Label.y, Label.z)
                    .group_by(Label.x, Label.y, Label.z)
                    .having(func.count() > 1)
                    .subquery()
                )
            )
            still_open = session.scalar(
                select(func.count(AnnotationTask.id)).where(AnnotationTask.status == "open")
            )
        engine.dispose()
        leased = Counter(log["leased"])
        labels = summarise(log["label_ms"], elapsed)
        return {
            "next": summarise(log["next_ms"], elapsed),
            "label": labels,
            "labels_per_s": labels["rps"],
            "double_leases": sum(1 for n in leased.values() if n > 1),
            "doubly_labelled_patches": int(twice or 0),
            "lost_labels": len(set(log["label_ids"]) - stored),
            "no_tasks_answers": len(log["no_tasks"]),
            "open_tasks_at_end": int(still_open or 0),
            "labels_stored": len(stored),
            "replacement_s": [round(v, 3) for v in log["replacement_s"]],
            "errors": dict(Counter(log["errors"])),
            "seconds": round(elapsed, 1),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        drop_database(admin_url, url)


def spread(runs: list[dict], *path: str) -> dict[str, float]:
    values = []
    for run in runs:
        value = run
        for key in path:
            value = value[key]
        values.append(float(value))
    return {
        "median": round(float(np.median(values)), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


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
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "api_load.json")
    args = parser.parse_args()

    admin_url = os.environ.get(
        "ARTIFACT_LOOP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    runs = []
    for i in range(args.repeats):
        print(
            f"run {i + 1}/{args.repeats}: {args.annotators} annotators for {args.seconds:.0f} s "
            f"against {args.workers} API workers"
            + (f", batch replaced at {args.replace_at:.0f} s" if args.replace_at else "")
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
    result = {
        "annotators": args.annotators,
        "seconds": args.seconds,
        "api_workers": args.workers,
        "think_ms": args.think_ms,
        "replace_at_s": args.replace_at,
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
