"""`docker compose up` for real: the CPU variant of the stack built and run on a Docker engine.

The stack runs under its own compose project name, on a free host port, with its own folders
and volumes, so it never touches another stack (or the PostgreSQL and Redis of the test suite);
it is removed with its volumes at the end. Without a reachable Docker engine (and Compose v2)
the tests skip with one line, or fail under ``ARTIFACT_LOOP_TEST_REQUIRE_SERVICES=1``.

The base images come from a registry, or on a machine without one from
``deploy/local-base-images.sh``. Where pip on this machine has its own configuration (a
``/etc/pip.conf``, torch wheels in a local ``--find-links`` folder), the build adds
``docker-compose.pip.yml``: that configuration reaches pip as build secrets, and the image is
checked not to keep it. ``TORCH_CPU_INDEX_URL`` picks the index of torch's CPU build.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.sim.synth import make_synthetic_dataset
from tests.processes import free_port, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "artifact-loop:cpu"  # docker-compose.cpu.yml
APP_SERVICES = ("migrate", "api", "worker-gpu", "worker-io")
# a small loop: 200 patches, short trainings, one view per patch
SMALL_LOOP = {
    "ARTIFACT_LOOP_PRETRAIN_PATCHES": "200",
    "ARTIFACT_LOOP_PRETRAIN_EPOCHS": "1",
    "ARTIFACT_LOOP_TRAIN_EPOCHS": "3",
    "ARTIFACT_LOOP_RETRAIN_EVERY": "10",
    "ARTIFACT_LOOP_BATCH_SIZE": "10",
    "ARTIFACT_LOOP_AUDIT_SIZE": "20",
    "ARTIFACT_LOOP_TTA": "1",
    "ARTIFACT_LOOP_TORCH_THREADS": "1",
}
BUILD_TIMEOUT_S = 3600  # a cold build downloads torch and the project's dependencies
UP_TIMEOUT_S = 300


def _missing_engine(what: str) -> None:
    if os.environ.get("ARTIFACT_LOOP_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(what, pytrace=False)
    pytest.skip(what)


def _engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client on PATH; the compose stack test needs a Docker engine"
    info = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if info.returncode != 0:
        reason = " ".join((info.stderr or info.stdout).split())[:200]
        return f"no Docker engine reachable ({reason}); start dockerd to run the compose stack test"
    compose = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
    )
    if compose.returncode != 0:
        return "Docker Compose v2 (`docker compose`) is not installed"
    return None


def _pip_find_links() -> list[Path]:
    """Local folders pip is configured to take wheels from (--find-links)."""
    values = os.environ.get("PIP_FIND_LINKS", "").split()
    got = subprocess.run(
        ["python", "-m", "pip", "config", "get", "global.find-links"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if got.returncode == 0:
        values += got.stdout.split()
    folders = [Path(v.removeprefix("file://")) for v in values if not v.startswith("http")]
    return [f for f in dict.fromkeys(folders) if f.is_dir()]


def _local_torch_wheels_image() -> str | None:
    """An image holding the local CPU torch wheels (cached by their names and sizes), or None."""
    wheels = sorted(
        w for folder in _pip_find_links() for w in folder.glob("torch-*+cpu-*-linux_x86_64.whl")
    ) + sorted(
        w
        for folder in _pip_find_links()
        for w in folder.glob("torch-*+cpu-*-manylinux*_x86_64.whl")
    )
    if not wheels:
        return None
    digest = hashlib.sha256(
        "".join(f"{w.name}:{w.stat().st_size}\n" for w in wheels).encode()
    ).hexdigest()[:12]
    image = f"artifact-loop-local/torch-wheels:{digest}"
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
        with tempfile.TemporaryDirectory() as tmp:
            for wheel in wheels:
                shutil.copy(wheel, tmp)
            tar = subprocess.Popen(["tar", "-C", tmp, "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(
                ["docker", "import", "-", image],
                stdin=tar.stdout,
                stdout=subprocess.DEVNULL,
                check=True,
            )
            assert tar.wait() == 0
    return image


@dataclass
class Stack:
    project: str
    files: list[str]
    env_file: Path
    env: dict[str, str]
    datasets: Path
    predictions: Path
    port: int
    used_pip_secrets: bool
    logs: list[tuple[str, str]] = field(default_factory=list)

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", "-p", self.project, "--env-file", str(self.env_file)]
        for name in self.files:
            command += ["-f", name]
        proc = subprocess.run(
            [*command, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-4000:]
            pytest.fail(f"docker compose {' '.join(args)} exited {proc.returncode}:\n{tail}")
        return proc

    def states(self) -> dict[str, dict[str, Any]]:
        out = self.compose("ps", "-a", "--format", "json").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return {row["Service"]: row for row in rows}

    def collect_logs(self) -> None:
        for service in ("postgres", "redis", *APP_SERVICES):
            got = self.compose("logs", "--no-color", "--no-log-prefix", service)
            self.logs.append((service, got.stdout + got.stderr))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    problem = _engine_problem()
    if problem:
        _missing_engine(problem)
    work = tmp_path_factory.mktemp("compose")
    datasets, predictions = work / "datasets", work / "predictions"
    datasets.mkdir()
    predictions.mkdir()
    # the containers' user (uid 1000) writes predictions here, as the README asks of the host
    if os.geteuid() == 0:
        os.chown(predictions, 1000, 1000)
    else:
        predictions.chmod(0o777)
    port = free_port()
    env_file = work / "compose.env"
    env_file.write_text(
        f"POSTGRES_PASSWORD={secrets.token_hex(12)}\n"
        f"DATASETS_DIR={datasets}\nPREDICTIONS_DIR={predictions}\nAPI_PORT={port}\n"
    )
    # the stack's own settings: no .env of the checkout, a small loop
    override = work / "docker-compose.test.yml"
    override.write_text(
        "services:\n"
        + "".join(
            f"  {name}:\n    env_file: !reset []\n    environment: {json.dumps(SMALL_LOOP)}\n"
            for name in APP_SERVICES
        )
    )
    files = ["docker-compose.yml", "docker-compose.cpu.yml"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    wheels = _local_torch_wheels_image()
    pip_conf = Path(env.get("PIP_CONF", "/etc/pip.conf"))
    used_pip_secrets = wheels is not None or pip_conf.is_file()
    if used_pip_secrets:
        files.append("docker-compose.pip.yml")
        if not pip_conf.is_file():
            (work / "pip.conf").write_text("")
            env["PIP_CONF"] = str(work / "pip.conf")
        ca = Path(env.get("PIP_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
        if not ca.is_file():
            import certifi

            env["PIP_CA_BUNDLE"] = certifi.where()
        if wheels:
            env["PIP_WHEELS_IMAGE"] = wheels
    files.append(str(override))
    stack = Stack(
        project=f"al-e2e-{uuid.uuid4().hex[:8]}",
        files=files,
        env_file=env_file,
        env=env,
        datasets=datasets,
        predictions=predictions,
        port=port,
        used_pip_secrets=used_pip_secrets,
    )
    try:
        stack.compose("build", "api", timeout=BUILD_TIMEOUT_S)
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False)


# containers answer slower than local processes: a longer wait, polled less often
_wait = functools.partial(wait_for, timeout=600, every=2)


def _up(stack: Stack) -> None:
    up = stack.compose(
        "up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), timeout=UP_TIMEOUT_S + 60,
        check=False,
    )  # fmt: skip
    states = stack.states()
    if up.returncode != 0:
        # what the failing health checks said, and the services' last words
        ids = [row["ID"] for row in states.values()]
        health = subprocess.run(
            ["docker", "inspect", "--format", "{{.Name}} {{json .State.Health}}", *ids],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        logs = stack.compose("logs", "--no-color", "--tail", "15", check=False).stdout
        pytest.fail(
            f"docker compose up --wait exited {up.returncode}: {up.stderr.strip().splitlines()[-1]}"
            f"\nhealth checks (the end of each):\n"
            + "\n".join(
                line if len(line) < 600 else f"{line[:80]} ... {line[-500:]}"
                for line in health.splitlines()
            )
            + f"\nlogs:\n{logs[-3000:]}"
        )
    for name in ("postgres", "redis", "api"):
        assert states[name]["Health"] == "healthy", (name, states[name])
    for name in ("worker-gpu", "worker-io"):
        assert states[name]["State"] == "running", (name, states[name])
    migrate = states["migrate"]
    assert migrate["State"] == "exited" and migrate["ExitCode"] == 0, migrate


def _truth(dataset: Path) -> dict[tuple[int, int, int], str]:
    with (dataset / "ground_truth.csv").open() as fh:
        return {(int(r["x"]), int(r["y"]), int(r["z"])): r["label"] for r in csv.DictReader(fh)}


def _label_next(http: httpx.Client, ds: int, truth: dict[tuple[int, int, int], str]) -> bool:
    """The annotator labels the task the service hands out; False when none is open."""
    task = http.post(f"/datasets/{ds}/tasks/next").json()["task"]
    if task is None:
        return False
    verdict = truth[(task["x"], task["y"], task["z"])]
    body = {"label": verdict, "idempotency_key": f"e2e-{task['id']}"}
    r = http.post(f"/tasks/{task['id']}/label", json=body)
    assert r.status_code == 200, r.text
    return True


def _jobs(http: httpx.Client, ds: int, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = http.get(
        "/jobs", params={"dataset_id": ds, "limit": 200, **params}
    ).json()["items"]
    failed = [j for j in items if j["state"] == "failed"]
    assert not failed, f"a job failed: {failed[0]['kind']}: {failed[0]['error']}"
    return items


def _train_by_the_loop(
    http: httpx.Client, ds: int, truth: dict[tuple[int, int, int], str], after: int
) -> dict[str, Any]:
    """Label handed-out tasks until the loop starts a training (job id > ``after``) and it
    succeeds; returns that job."""

    def started() -> dict[str, Any] | None:
        trains = [j for j in _jobs(http, ds, kind="train") if j["id"] > after]
        if trains:
            return trains[-1]
        _label_next(http, ds, truth)
        return None

    job = _wait(started, "a training started by labels", every=0.2)
    assert job["requested_by"] == "loop", job
    done = _wait(
        lambda: (
            (j := http.get(f"/jobs/{job['id']}").json())["state"] in ("succeeded", "failed") and j
        ),
        "the training",
    )
    assert done["state"] == "succeeded", done["error"]
    # worker-gpu (Celery node gpu@<container>) trained it, on the CPU in this variant
    assert (done["worker"] or "").startswith("gpu@"), done["worker"]
    return done


# a log record starts with Celery's "[2026-01-01 ..." or one of uvicorn's and logging's levels;
# the lines after it (a traceback, a banner) belong to it
RECORD_START = re.compile(r"^(\[\d{4}-\d\d-\d\d |(DEBUG|INFO|WARNING|ERROR|CRITICAL):)")


def _records(log: str) -> list[str]:
    records: list[list[str]] = [[]]
    for line in log.splitlines():
        if RECORD_START.match(line) and records[-1]:
            records.append([])
        records[-1].append(line)
    return ["\n".join(r) for r in records if r]


def _expected_on_broker_restart(service: str, record: str) -> bool:
    """Celery's consumer logs the lost connection with its exception (a WARNING, by design of
    Celery) when the broker goes away, here on `docker compose restart redis`; it reconnects."""
    return service.startswith("worker-") and "consumer: Connection to broker lost" in record


def test_compose_stack_end_to_end(stack: Stack) -> None:
    _up(stack)

    # migrations ran: the schema is at Alembic's head
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_current_head()
    version = stack.compose(
        "exec", "-T", "postgres", "psql", "-U", "artifact_loop", "-d", "artifact_loop",
        "-tAc", "SELECT version_num FROM alembic_version",
    ).stdout.strip()  # fmt: skip
    assert version == head

    made = stack.compose(
        "exec", "-T", "api", "artifact-loop", "token", "create", "--role", "admin", "e2e"
    )
    # the CLI prints the token alone on the line after "... shown only now:"
    lines = made.stdout.splitlines()
    token = next(lines[i + 1].strip() for i, line in enumerate(lines) if "shown only now" in line)
    http = httpx.Client(
        base_url=f"http://127.0.0.1:{stack.port}/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    me = http.get("/me")
    assert me.status_code == 200 and me.json()["name"] == "e2e", me.text

    # a synthetic dataset under DATASETS_DIR, registered by its path in the containers
    dataset = stack.datasets / "synth1"
    make_synthetic_dataset(dataset, seed=7, shape=(700, 8), artifact_rate=3.0)
    truth = _truth(dataset)
    r = http.post("/datasets", json={"name": "synth1", "path": "/datasets/synth1"})
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    _wait(lambda: http.get(f"/datasets/{ds}").json()["active_models"]["ae"], "pretraining")

    # labels through the HTTP API start a training in worker-gpu; its proposals follow
    first = _train_by_the_loop(http, ds, truth, after=0)
    version_id = first["result"].get("model_version_id") or max(
        v["id"]
        for v in http.get(f"/datasets/{ds}/models", params={"kind": "classifier"}).json()["items"]
    )

    def proposed() -> bool:
        open_tasks = http.get(
            f"/datasets/{ds}/tasks", params={"status": "open", "kind": "proposal", "limit": 500}
        ).json()["items"]
        return any(t["model_version_id"] == version_id for t in open_tasks)

    _wait(proposed, "proposals of the new classifier")

    # predict: a webKnossos dataset under PREDICTIONS_DIR on the host, written as uid 1000
    job = http.post(f"/datasets/{ds}/jobs", json={"kind": "predict", "params": {}}).json()["job"]
    done = _wait(
        lambda: (
            (j := http.get(f"/jobs/{job['id']}").json())["state"] in ("succeeded", "failed") and j
        ),
        "the prediction",
    )
    assert done["state"] == "succeeded", done["error"]
    inside = Path(done["result"]["output"])
    on_host = stack.predictions / inside.relative_to("/var/lib/artifact-loop/predictions")
    written = [p for p in on_host.rglob("*")]
    assert written, f"nothing under {on_host}"
    assert {p.stat().st_uid for p in [on_host, *written]} == {1000}

    # the broker restarts: nothing is lost, the loop goes on
    stack.compose("restart", "redis")
    _wait(lambda: stack.states()["redis"]["Health"] == "healthy", "redis healthy again")
    _train_by_the_loop(http, ds, truth, after=first["id"])

    # down and up again: datasets, labels and model versions stay (named volumes)
    def state() -> tuple[list[int], int, list[int]]:
        datasets = [d["id"] for d in http.get("/datasets").json()["items"]]
        labels = http.get(f"/datasets/{ds}/labels", params={"limit": 1}).json()["total"]
        versions = sorted(v["id"] for v in http.get(f"/datasets/{ds}/models").json()["items"])
        return datasets, labels, versions

    before = state()
    assert before[1] >= 20 and len(before[2]) >= 3, before
    stack.collect_logs()
    stack.compose("down", "--timeout", "30")
    _up(stack)
    assert state() == before
    stack.collect_logs()

    tracebacks = [
        f"{service}: {record}"
        for service, log in stack.logs
        for record in _records(log)
        if "Traceback" in record and not _expected_on_broker_restart(service, record)
    ]
    assert not tracebacks, "\n\n".join(tracebacks[:5])


def test_image_keeps_no_build_secrets(stack: Stack) -> None:
    """pip's configuration and CA bundle were build secrets: the image holds neither."""
    if not stack.used_pip_secrets:
        pytest.skip("this machine's build needed no pip configuration")
    probe = subprocess.run(
        [
            "docker", "run", "--rm", "--entrypoint", "sh", IMAGE, "-c",
            "cat /etc/pip.conf 2>/dev/null; echo ---; cat /etc/ssl/certs/ca-certificates.crt",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout  # fmt: skip
    pip_conf, _, bundle = probe.partition("---\n")
    host_conf = Path(stack.env.get("PIP_CONF", "/etc/pip.conf")).read_text()
    assert pip_conf.strip() == "" or pip_conf != host_conf
    host_bundle = Path(stack.env.get("PIP_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
    assert bundle != host_bundle.read_text(), "the image holds the build machine's CA bundle"
