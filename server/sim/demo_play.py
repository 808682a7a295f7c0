"""The demo's simulated annotator and its view of the API: every call checked, a slow or
briefly unavailable server waited out and counted, never a traceback."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from server.errors import ArtifactLoopError
from server.labels.truth import TruthRow

Procs = dict[str, subprocess.Popen[bytes]]
Truth = dict[tuple[int, int, int], TruthRow]
NO_PROGRESS_S = 900  # give up when no job moved for this long


@dataclass
class DemoClient:
    """The API as the demo uses it: an admin and a simulated annotator."""

    base: str
    admin_token: str
    annotator_token: str
    procs: Procs
    server_errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._admin = self._client(self.admin_token)
        self._sim = self._client(self.annotator_token)

    def _client(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.base}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(120, connect=10),
        )

    def call(
        self, method: str, url: str, *, annotator: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One request; a 5xx or a dropped connection is counted and retried with backoff."""
        client = self._sim if annotator else self._admin
        last = ""
        for attempt in range(8):
            check_alive(self.procs)
            try:
                response = client.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 500:
                    return response
                last = f"{response.status_code} {_detail(response)}"
                self.server_errors.append(f"{method} {url}: {last}")
            time.sleep(min(2**attempt, 15))
        raise ArtifactLoopError(f"{method} {url} kept failing: {last}")

    def json(self, method: str, url: str, *, annotator: bool = False, **kwargs: Any) -> Any:
        response = self.call(method, url, annotator=annotator, **kwargs)
        if response.status_code >= 400:
            raise ArtifactLoopError(f"{method} {url}: {response.status_code} {_detail(response)}")
        return response.json()

    def jobs(self, dataset_id: int, **params: Any) -> list[dict[str, Any]]:
        return list(
            self.json("GET", "/jobs", params={"dataset_id": dataset_id, "limit": 1000, **params})[
                "items"
            ]
        )

    def versions(self, dataset_id: int) -> list[dict[str, Any]]:
        items = self.json("GET", f"/datasets/{dataset_id}/models", params={"limit": 1000})
        return sorted(items["items"], key=lambda v: v["id"])

    def open_proposals(self, dataset_id: int) -> int:
        page = self.json(
            "GET",
            f"/datasets/{dataset_id}/tasks",
            params={"status": "open", "kind": "proposal", "limit": 1},
        )
        return int(page["total"])


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", "")
    except ValueError:
        detail = response.text[:200]
    return " ".join(str(detail).split())


def check_alive(procs: Procs) -> None:
    dead = [name for name, p in procs.items() if p.poll() is not None]
    if dead:
        raise ArtifactLoopError(
            f"{', '.join(dead)} stopped; see demo-{dead[0]}.log in the data dir"
        )


class Waiter:
    """Waits on the loop's state (never on a fixed time): fails on a job that failed after
    the demo started, or when no job moved for :data:`NO_PROGRESS_S` seconds."""

    def __init__(self, api: DemoClient, dataset_id: int, progress: Progress | None) -> None:
        self.api, self.dataset_id, self.progress = api, dataset_id, progress
        self.known_failures = {j["id"] for j in api.jobs(dataset_id, state="failed")}

    def until(self, done: Callable[[], bool], bar: TaskID | None) -> None:
        moved, seen = time.monotonic(), None
        while True:
            jobs = self.api.jobs(self.dataset_id, top_level="false")
            failed = [
                j for j in jobs if j["state"] == "failed" and j["id"] not in self.known_failures
            ]
            if failed:
                j = failed[-1]
                raise ArtifactLoopError(f"{j['kind']} job {j['id']} failed: {j['error']}")
            state = [(j["id"], j["state"], round(j["progress"], 3)) for j in jobs]
            if state != seen:
                moved, seen = time.monotonic(), state
            active = [j for j in jobs if j["state"] in ("queued", "running")]
            if not active and done():
                return
            running = [j for j in active if j["state"] == "running" and j["parent_id"] is None]
            if self.progress is not None and bar is not None and running:
                j = running[-1]
                self.progress.update(bar, info=f"{j['kind']}: {j['message']} ({j['progress']:.0%})")
            if time.monotonic() - moved > NO_PROGRESS_S:
                raise ArtifactLoopError(f"the loop made no progress for {NO_PROGRESS_S // 60} min")
            time.sleep(1.0)

    def idle(self, bar: TaskID | None = None) -> None:
        """No job queued or running, twice in a row: a finished job may start the next."""
        self.until(lambda: True, bar)
        time.sleep(2.0)
        self.until(lambda: True, bar)


def ready_classifiers(api: DemoClient, dataset_id: int) -> list[dict[str, Any]]:
    return [
        v for v in api.versions(dataset_id) if v["kind"] == "classifier" and v["status"] == "ready"
    ]


def _more_classifiers(api: DemoClient, dataset_id: int, *, than: int) -> Callable[[], bool]:
    return lambda: len(ready_classifiers(api, dataset_id)) > than


def play(
    console: Console,
    api: DemoClient,
    *,
    dataset_id: int,
    truth: Truth,
    rounds: int,
    round_size: int,
) -> list[dict[str, Any]]:
    """Rounds of: wait for proposals, label ``round_size`` tasks (the number of new labels
    that starts a training), wait for that one training and its proposals."""
    log: list[dict[str, Any]] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    ) as progress:
        waiter = Waiter(api, dataset_id, progress)
        bar = progress.add_task("pretraining and first proposals", total=None, info="")
        waiter.until(lambda: api.open_proposals(dataset_id) > 0, bar)
        waiter.idle(bar)
        progress.update(bar, total=1, completed=1, info="")
        for round_no in range(1, rounds + 1):
            started = time.monotonic()
            bar = progress.add_task(f"round {round_no}/{rounds}: labelling", total=None, info="")
            before = ready_classifiers(api, dataset_id)
            trains = {j["id"] for j in api.jobs(dataset_id, kind="train")}
            given = _label_round(
                api, progress, bar, dataset_id=dataset_id, truth=truth, n=round_size
            )
            new_trains = [j for j in api.jobs(dataset_id, kind="train") if j["id"] not in trains]
            if not new_trains:  # fewer tasks than a training needs: ask for it
                api.json("POST", f"/datasets/{dataset_id}/jobs", json={"kind": "train"})
            progress.update(bar, description=f"round {round_no}/{rounds}: training and scoring")
            waiter.until(_more_classifiers(api, dataset_id, than=len(before)), bar)
            waiter.idle(bar)
            version = ready_classifiers(api, dataset_id)[-1]
            progress.update(bar, total=1, completed=1, info=f"version {version['id']}")
            log.append(
                {
                    "round": round_no,
                    **given,
                    "trainings": len(
                        [j for j in api.jobs(dataset_id, kind="train") if j["id"] not in trains]
                    ),
                    "model_version_id": version["id"],
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
    return log


def _label_round(
    api: DemoClient,
    progress: Progress,
    bar: TaskID,
    *,
    dataset_id: int,
    truth: Truth,
    n: int,
) -> dict[str, int]:
    given = {"labels": 0, "proposal_labels": 0, "audit_labels": 0}
    # annotators are not told which tasks are audit tasks: the admin's list says where they are
    audit = api.json(
        "GET", f"/datasets/{dataset_id}/tasks", params={"kind": "audit", "limit": 1000}
    )["items"]
    audit_at = {(t["x"], t["y"], t["z"]) for t in audit}
    while given["labels"] < n:
        task = api.json("POST", f"/datasets/{dataset_id}/tasks/next", annotator=True)["task"]
        if task is None:
            break
        row = truth.get((task["x"], task["y"], task["z"]))
        body: dict[str, Any] = {
            "label": "artifact" if row is not None and row.artifact else "clean",
            "idempotency_key": f"demo-{task['id']}",
        }
        if row is not None and row.artifact and row.artifact_type:
            body["artifact_type"] = row.artifact_type
        response = api.call("POST", f"/tasks/{task['id']}/label", annotator=True, json=body)
        if response.status_code == 409:
            continue  # the task was replaced by a newer batch meanwhile
        if response.status_code >= 400:
            raise ArtifactLoopError(
                f"labelling task {task['id']}: {response.status_code} {_detail(response)}"
            )
        given["labels"] += 1
        at = (task["x"], task["y"], task["z"])
        given["audit_labels" if at in audit_at else "proposal_labels"] += 1
        progress.update(bar, info=f"{given['labels']} of {n} labels")
    return given


def predict(console: Console, api: DemoClient, *, dataset_id: int) -> dict[str, Any]:
    """The active classifier's dense map over the whole dataset, as webKnossos layers."""
    job = api.json("POST", f"/datasets/{dataset_id}/jobs", json={"kind": "predict"})["job"]
    with console.status("predicting the whole dataset ...") as status:
        while True:
            j = api.json("GET", f"/jobs/{job['id']}")
            if j["state"] in ("succeeded", "failed", "cancelled"):
                break
            status.update(f"predicting the whole dataset: {j['message']}")
            time.sleep(1.0)
    if j["state"] != "succeeded":
        raise ArtifactLoopError(f"predict job {j['id']} {j['state']}: {j['error']}")
    r = j["result"]
    gt = r.get("ground_truth") or {}
    console.print(
        f"\nprediction with model version {r.get('model_version_id')}: {r['clusters']} artifact "
        f"clusters, {r['artifact_cells']:,} of {r['cells']:,} cells above p={r['threshold']:.2f}"
        + (
            f"; patch-level PR-AUC {gt['pr_auc']:.3f} over {gt['patches']:,} patches"
            if gt.get("pr_auc") is not None
            else ""
        )
        + f"\n  webKnossos dataset with layers artifact_prob + artifact_mask: {r['output']}"
        f"\n  review the clusters in webKnossos: {r['nml']}",
        soft_wrap=True,
    )
    return {
        "job_id": j["id"],
        "model_version_id": r.get("model_version_id"),
        "pr_auc": gt.get("pr_auc"),
        "patches": gt.get("patches"),
        "clusters": r["clusters"],
        "output": r["output"],
    }
