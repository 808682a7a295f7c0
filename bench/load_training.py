"""The loop's own training beside bench/api_load.py's annotators (``--training``).

A worker process, started as ``artifact-loop worker`` starts it (same Celery arguments, same
settings, so the same CPU priority), runs on the bench's database and broker. A second,
synthetic dataset is registered through the API; its autoencoder is pretrained by that worker,
120 of its patches are labelled, and from then on a classifier training on it is kept running:
when one ends, the next is queued. Annotators and trainings share the cores, as on a laptop or
a single server.
"""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil

from server.auth import create_token
from server.cli.main import worker_argv
from server.db.base import make_engine, make_sessionmaker, session_scope
from server.sim.synth import make_synthetic_dataset

LABELS = 120
EPOCHS = 1000  # a training outlasts a run; the keeper queues another if one ends
SETTINGS = {
    # a small pretraining: the set-up is not measured, only the training that follows it
    "ARTIFACT_LOOP_PRETRAIN_PATCHES": "300",
    "ARTIFACT_LOOP_PRETRAIN_EPOCHS": "2",
}


class TrainingBeside:
    """Start with :meth:`start` (blocking: pretraining, labels, the first training), keep it
    going with :meth:`keep` inside the measured run, end with :meth:`stop`."""

    def __init__(
        self, *, url: str, base: str, env: dict[str, str], folder: Path, dataset: Path
    ) -> None:
        self.url, self.base, self.env, self.folder = url, base, env, folder
        self.dataset = dataset
        self.proc: subprocess.Popen[bytes] | None = None
        self.headers: dict[str, str] = {}
        self.dataset_id = 0
        self.job_id = 0
        self.started = 0
        self.running_s = 0.0
        self.log = folder / "worker.log"

    def start(self, timeout: float = 600) -> None:
        engine = make_engine(self.url)
        with session_scope(make_sessionmaker(engine)) as session:
            self.headers = {
                "Authorization": f"Bearer {create_token(session, name='trainer', role='admin')[1]}"
            }
        engine.dispose()
        path = self.dataset
        argv = worker_argv(queues="gpu,io", name="bench-training", loglevel="WARNING")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker.app", *argv],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        with httpx.Client(base_url=f"{self.base}/api/v1", headers=self.headers, timeout=60) as api:
            answer = api.post("/datasets", json={"name": "training", "path": str(path)})
            answer.raise_for_status()
            self.dataset_id = int(answer.json()["id"])
            deadline = time.monotonic() + timeout
            while not api.get(f"/datasets/{self.dataset_id}").json()["active_models"]["ae"]:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"no autoencoder for the training:\n{self._log_tail()}")
                time.sleep(1)
            with (path / "ground_truth.csv").open() as fh:
                rows = list(csv.DictReader(fh))[:LABELS]
            for r in rows:
                body = {"x": int(r["x"]), "y": int(r["y"]), "z": int(r["z"]), "label": r["label"]}
                api.post(f"/datasets/{self.dataset_id}/labels", json=body).raise_for_status()
            self._queue(api)
            while self._state(api) != "running":
                if time.monotonic() > deadline:
                    raise SystemExit(f"the training did not start:\n{self._log_tail()}")
                time.sleep(0.5)

    async def keep(self, *, at: tuple[float, float], log: dict[str, list]) -> None:
        """From the end of the warm-up to the end of the run: count the seconds a training
        ran and queue the next one when one ends; the worker's CPU seconds go to the log."""
        await asyncio.sleep(max(0.0, at[0] - time.perf_counter()))
        cpu_before = self._cpu()
        async with aiohttp.ClientSession(self.base, headers=self.headers) as http:
            last = time.perf_counter()
            while (now := time.perf_counter()) < at[1]:
                async with http.get(f"/api/v1/jobs/{self.job_id}") as r:
                    state = (await r.json())["state"] if r.status == 200 else "unknown"
                if state == "running":
                    self.running_s += now - last
                elif state in ("succeeded", "failed", "cancelled"):
                    await asyncio.to_thread(self._queue_now)
                last = now
                await asyncio.sleep(1.0)
        log["training_cpu_s"] = [self._cpu() - cpu_before]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def figures(self, measured_s: float, log: dict[str, list]) -> dict[str, Any]:
        return {
            "dataset_patches_labelled": LABELS,
            "trainings_started": self.started,
            "training_running_share": round(self.running_s / measured_s, 3),
            "training_cpu_s": round(log.get("training_cpu_s", [float("nan")])[0], 1),
            "worker_nice": self.nice,
        }

    @property
    def nice(self) -> int | None:
        try:
            return psutil.Process(self.proc.pid).nice() if self.proc else None
        except psutil.Error:
            return None

    def _queue(self, api: httpx.Client) -> None:
        body = {"kind": "train", "params": {"epochs": EPOCHS, "patience": EPOCHS}}
        answer = api.post(f"/datasets/{self.dataset_id}/jobs", json=body)
        answer.raise_for_status()
        self.job_id = int(answer.json()["job"]["id"])
        self.started += 1

    def _queue_now(self) -> None:
        with httpx.Client(base_url=f"{self.base}/api/v1", headers=self.headers, timeout=60) as api:
            self._queue(api)

    def _state(self, api: httpx.Client) -> str:
        return str(api.get(f"/jobs/{self.job_id}").json()["state"])

    def _cpu(self) -> float:
        if self.proc is None:
            return float("nan")
        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
            return sum(float(p.cpu_times().user + p.cpu_times().system) for p in procs)
        except psutil.Error:
            return float("nan")

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def make_training_dataset(path: Path) -> Path:
    """The dataset the trainings learn from (840 x 840 px, 6 sections); made once per bench
    run and registered anew in each repeat's database."""
    make_synthetic_dataset(path, seed=4, shape=(840, 6), artifact_rate=3.0)
    return path


def settings_env() -> dict[str, str]:
    """Settings the API and the training worker share in ``--training`` runs."""
    return dict(SETTINGS)
