"""docker-compose.yml stays honest: every service command is one this suite runs natively."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import inspect

from server.db.base import make_engine

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def _option(command: list[str], *names: str) -> str | None:
    for i, part in enumerate(command):
        if part in names and i + 1 < len(command):
            return command[i + 1]
    return None


def test_design_services_are_all_there() -> None:
    assert {"postgres", "redis", "migrate", "api", "worker-gpu", "worker-io"} <= set(SERVICES)
    assert SERVICES["postgres"]["healthcheck"] and SERVICES["redis"]["healthcheck"]
    assert SERVICES["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    gpu = SERVICES["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    mounts = SERVICES["worker-gpu"]["volumes"]
    assert any(m.endswith(":ro") for m in mounts), "datasets are mounted read-only"


def test_datasets_are_read_only_from_their_mount() -> None:
    """The API registers datasets (and reads mag paths) only under the mounted folder."""
    for name in ("api", "worker-gpu", "worker-io"):
        roots = SERVICES[name]["environment"].get("ARTIFACT_LOOP_DATASET_ROOTS")
        mounted = [m.rsplit(":", 2)[1] for m in SERVICES[name]["volumes"] if m.endswith(":ro")]
        assert roots and roots.split(":") == mounted, (name, roots, mounted)


def test_two_stacks_fit_the_default_max_connections() -> None:
    """The connection budget (README): every process's pool, summed over a stack, twice,
    within PostgreSQL's default max_connections=100 less its 3 superuser slots."""
    engine = make_engine("postgresql://budget@127.0.0.1:1/budget")  # connects to nothing yet
    per_process = engine.pool.size() + engine.pool._max_overflow  # type: ignore[attr-defined]
    engine.dispose()
    api = int(_option(SERVICES["api"]["command"], "--workers") or 1) * per_process
    # a Celery process: a running job and its heartbeat (the parent of the io pool, the reaper)
    io = int(_option(SERVICES["worker-io"]["command"], "--concurrency") or 1) * 2 + 1
    gpu = 2 + 1  # solo: the job and its heartbeat in the process that runs the reaper
    assert per_process <= 12 and 2 * (api + io + gpu) <= 97, (per_process, api, io, gpu)


def test_api_command_resolves_to_the_app() -> None:
    command = SERVICES["api"]["command"]
    assert command[0] == "uvicorn"
    module_name, attr = command[1].split(":")
    app = getattr(importlib.import_module(module_name), attr)
    from fastapi import FastAPI

    assert isinstance(app, FastAPI)


@pytest.mark.parametrize(("service", "queue"), [("worker-gpu", "gpu"), ("worker-io", "io")])
def test_worker_commands_resolve_to_the_celery_app(service: str, queue: str) -> None:
    from server.jobs.queue import TASK_RUN_JOB, TASK_RUN_JOB_IO
    from server.jobs.registry import REGISTRY

    command = SERVICES[service]["command"]
    assert command[:2] == ["celery", "-A"]
    app = importlib.import_module(command[2]).app
    assert _option(command, "-Q", "--queues") == queue
    assert queue in {spec.queue.value for spec in REGISTRY.values()}
    routes = app.conf.task_routes
    assert routes[TASK_RUN_JOB if queue == "gpu" else TASK_RUN_JOB_IO]["queue"] == queue
    app.loader.import_default_modules()
    assert TASK_RUN_JOB in app.tasks and TASK_RUN_JOB_IO in app.tasks
    if queue == "gpu":
        assert _option(command, "--pool", "-P") == "solo"
        assert _option(command, "--prefetch-multiplier") == "1"


@pytest.mark.slow  # a real process
def test_migrate_command_runs_natively(db_url: str) -> None:
    command = SERVICES["migrate"]["command"]
    assert command == ["alembic", "upgrade", "head"]
    env = {**os.environ, "ARTIFACT_LOOP_DATABASE_URL": db_url}
    exe = Path(sys.executable).with_name("alembic")
    proc = subprocess.run(
        [str(exe), *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    engine = make_engine(db_url)
    try:
        assert "labels" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


class _OverrideLoader(yaml.SafeLoader):
    """Compose override files use `!reset` to drop a key of the base file."""


_OverrideLoader.add_constructor("!reset", lambda loader, node: {"!reset": True})


def test_cpu_variant_drops_the_gpu_and_pins_the_cpu_build_of_torch() -> None:
    cpu = yaml.load((ROOT / "docker-compose.cpu.yml").read_text(), Loader=_OverrideLoader)
    app = {name for name, spec in SERVICES.items() if "build" in spec}
    assert set(cpu["services"]) == app
    assert cpu["services"]["worker-gpu"]["deploy"] == {"!reset": True}
    for spec in cpu["services"].values():
        # its own tag, so the GPU image of the same checkout stays; torch==X+cpu never
        # resolves to the CUDA build that a plain torch==X from PyPI is on Linux
        assert spec["image"] == "artifact-loop:cpu"
        assert spec["build"]["args"]["TORCH_LOCAL_VERSION"] == "cpu"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH_LOCAL_VERSION=" in dockerfile and "torch.version.cuda is None" in dockerfile


def test_pip_configuration_reaches_the_build_only_as_secrets() -> None:
    pip = yaml.load((ROOT / "docker-compose.pip.yml").read_text(), Loader=_OverrideLoader)
    assert set(pip["secrets"]) == {"pip_conf", "pip_ca_bundle"}
    for spec in pip["services"].values():
        assert set(spec["build"]["secrets"]) == {"pip_conf", "pip_ca_bundle"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY pip" not in dockerfile and "pip.conf" not in dockerfile.split("FROM python")[0]
    for secret in ("pip_conf", "pip_ca_bundle"):
        assert dockerfile.count(f"--mount=type=secret,id={secret},") == 2
