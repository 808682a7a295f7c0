"""Load test of the annotation API: concurrent simulated annotators against uvicorn + PostgreSQL.

    python bench/api_load.py [--annotators 50] [--seconds 60] [--workers 2] [--think-ms 500]

Creates a scratch database on the PostgreSQL server (ARTIFACT_LOOP_BENCH_PG, default
postgresql://postgres@127.0.0.1:5432/postgres), starts ``uvicorn server.main:app`` with
``--workers``, and lets every annotator loop: lease the next task, label it, look at the next patch for ``--think-ms`` (a fast human takes 1-3 s; 0 makes a
closed loop that measures the saturation throughput). Prints latency
percentiles and throughput per endpoint, and checks that no task was leased twice and no
label got lost. Writes bench/results/api_load.json.
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
            dataset = register_dataset(session, name="bench", path=str(dataset_path))
            origins = grid_of(dataset).origins(np.arange(len(grid_of(dataset))))
            session.add_all(
                AnnotationTask(
                    dataset_id=dataset.id,
                    kind="proposal",
                    grid_index=i % len(origins),
                    x=int(origins[i % len(origins)][0]),
                    y=int(origins[i % len(origins)][1]),
                    z=int(origins[i % len(origins)][2]),
                    w=140,
                    h=140,
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
                return
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
    base: str, secrets: list[str], dataset_id: int, seconds: float, think_s: float
) -> dict:
    log: dict[str, list] = {
        "next_ms": [],
        "label_ms": [],
        "leased": [],
        "label_ids": [],
        "errors": [],
    }
    start = time.perf_counter()
    warm_until = start + WARM_UP_S
    stop_at = warm_until + seconds
    await asyncio.gather(
        *(annotator(base, s, dataset_id, stop_at, log, think_s, warm_until) for s in secrets)
    )
    log["elapsed_s"] = [time.perf_counter() - warm_until]
    return log


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=60_000)
    parser.add_argument("--think-ms", type=float, default=500, help="Mean pause between labels")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "api_load.json")
    args = parser.parse_args()

    admin_url = os.environ.get(
        "ARTIFACT_LOOP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
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
        print(
            f"{args.annotators} annotators for {args.seconds:.0f} s against {args.workers} API workers ..."
        )
        log = asyncio.run(run_load(base, secrets, dataset_id, args.seconds, args.think_ms / 1000))
        elapsed = log["elapsed_s"][0]
        engine = make_engine(url)
        with session_scope(make_sessionmaker(engine)) as session:
            stored = set(session.scalars(__import__("sqlalchemy").select(Label.id)))
        engine.dispose()
        leased = Counter(log["leased"])
        result = {
            "annotators": args.annotators,
            "seconds": round(elapsed, 1),
            "api_workers": args.workers,
            "think_ms": args.think_ms,
            "next": summarise(log["next_ms"], elapsed),
            "label": summarise(log["label_ms"], elapsed),
            "double_leases": sum(1 for n in leased.values() if n > 1),
            "lost_labels": len(set(log["label_ids"]) - stored),
            "labels_stored": len(stored),
            "errors": dict(Counter(log["errors"])),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "database": "postgresql",
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        drop_database(admin_url, url)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for op in ("next", "label"):
        r = result[op]
        print(
            f"{op:>5}: p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  {r['rps']:.0f} req/s  ({r['count']} requests)"
        )
    print(
        f"double leases: {result['double_leases']}  lost labels: {result['lost_labels']}  errors: {result['errors'] or 'none'}"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
