"""The README as a newcomer reads it: its install lines are what CI runs, its demo numbers come
from the demo's results file, and its commands, run in a fresh venv, lead to proposals."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from server.sim.demo_results import code_fingerprint, readme_block, render_markdown
from server.sim.report import real_tissue_table
from tests.processes import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# what CI uses instead of CPU_INDEX, and the one difference .ci/run may have
CI_INDEX = os.environ.get("TORCH_INDEX_URL", "https://pypi.org/simple")


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def _commands(section: str) -> list[str]:
    """The lines of the section's first bash block, without comments."""
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "no bash block"
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def _ci_install() -> list[str]:
    text = (ROOT / ".ci/run").read_text()
    block = text.split("# -- install commands", 1)[1].split("# -- end of install commands", 1)[0]
    return [line.strip() for line in block.splitlines()[1:] if line.strip()]


def test_cpu_install_line_and_ci_differ_only_by_the_index_variable() -> None:
    install = [c for c in _commands(_section("Quickstart")) if not c.startswith("artifact-loop")]
    torch_line = next(c for c in install if "torch==" in c)
    assert f"--index-url {CPU_INDEX}" in torch_line, "the CPU line names PyTorch's CPU index"
    assert _ci_install() == [c.replace(CPU_INDEX, '"$TORCH_INDEX_URL"') for c in install]
    ci = (ROOT / ".ci/run").read_text()
    assert 'TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://pypi.org/simple}"' in ci
    version = re.search(r"torch==([\d.]+)", torch_line)
    assert version and f"ARG TORCH_VERSION={version.group(1)}" in (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL=" in (ROOT / "Dockerfile").read_text()


def test_readme_demo_numbers_come_from_the_results_file_of_this_version() -> None:
    results = json.loads((ROOT / "bench/results/demo.json").read_text())
    assert readme_block(README) == render_markdown(results), (
        "regenerate: python -m server.sim.demo_results bench/results/demo.json --readme README.md"
    )
    assert results["code_fingerprint"] == code_fingerprint(), (
        "the results are from other code: rerun "
        "`artifact-loop demo --exit --results bench/results/demo.json`, then regenerate"
    )


def test_readme_real_tissue_table_comes_from_the_committed_summary() -> None:
    summary = json.loads((ROOT / "bench/results/real_tissue/summary.json").read_text())
    block = re.search(
        r"<!-- real-tissue:start[^>]*-->\n(.*?)\n<!-- real-tissue:end -->", README, re.S
    )
    assert block, "README has no real-tissue block"
    assert block.group(1) == real_tissue_table(summary), (
        "regenerate: python bench/real_tissue.py --out bench/results/real_tissue --readme README.md"
    )


def _synthetic_labels(dataset: Path, out: Path) -> int:
    """A webKnossos annotation with boxes named artifact/clean on some ground-truth patches,
    standing in for the user's label file."""
    from server.labels.truth import read_truth
    from server.wklib import wk

    rows = read_truth(dataset)
    picked = [r for r in rows if r.artifact][:8] + [r for r in rows if not r.artifact][:16]
    annotation = wk.Annotation(name="labels", dataset_name="brain1", voxel_size=(32, 32, 35))
    annotation.user_bounding_boxes = [
        wk.BoundingBox(r.origin, (140, 140, 1)).with_name("artifact" if r.artifact else "clean")
        for r in picked
    ]
    annotation.save(out)
    return len(picked)


def _fresh_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a newcomer's shell: no venv active, no test settings, pip's cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTIFACT_LOOP_")}
    for key in ("VIRTUAL_ENV", "PYTHONPATH", "PIP_NO_CACHE_DIR", "PYTHONHOME"):
        env.pop(key, None)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    env.update(
        ARTIFACT_LOOP_DATA_DIR=str(tmp_path / "data"),
        # small models: this test is about the steps, not the model
        ARTIFACT_LOOP_PRETRAIN_PATCHES="200",
        ARTIFACT_LOOP_PRETRAIN_EPOCHS="1",
        ARTIFACT_LOOP_AUDIT_SIZE="30",
        ARTIFACT_LOOP_BATCH_SIZE="20",
        ARTIFACT_LOOP_TTA="1",
        WEBKNOSSOS_SKIP_VERSION_CHECK="True",
    )
    return env


@pytest.mark.slow
def test_readme_commands_in_a_fresh_venv_lead_to_a_proposal(tmp_path: Path) -> None:
    from server.sim.synth import make_synthetic_dataset

    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    repo = tmp_path / "artifact-loop"
    for name in filter(None, files.split("\0")):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    dataset = tmp_path / "brain1"
    make_synthetic_dataset(dataset, seed=3, shape=(840, 6), artifact_rate=3.0)
    nml = tmp_path / "labels.nml"
    n_labels = _synthetic_labels(dataset, nml)
    port = free_port()

    quickstart = [c for c in _commands(_section("Quickstart")) if c != "artifact-loop demo"]
    real_data = _commands(_section("Using real data"))
    substitutions = {
        CPU_INDEX: CI_INDEX,  # the one documented difference (see .ci/run)
        "/data/brain1": str(dataset),
        "--mag 8-8-1": "--mag 1",  # the synthetic dataset has mag 1 only
        "artefact_trainingData.nml": str(nml),
        "--port 8000": f"--port {port}",
    }
    script = ["set -euo pipefail"]
    for command in quickstart + real_data:
        for old, new in substitutions.items():
            command = command.replace(old, new)
        script.append(f"echo {shlex.quote('+ ' + command)}")
        script.append(command)
    assert script[-1].startswith("artifact-loop up")
    script[-1] = "exec " + script[-1]  # keeps serving: the test stops it
    (tmp_path / "readme.sh").write_text("\n".join(script) + "\n")

    log = tmp_path / "readme.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(tmp_path / "readme.sh")],
            cwd=repo,
            env=_fresh_env(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}/api/v1"

        def serving() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")[-5000:]
            try:
                return httpx.get(f"{base}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(serving, "the README's commands up to `artifact-loop up`", timeout=1800, every=2)
        text = log.read_text(errors="replace")
        assert f"added {n_labels:,} of {n_labels:,} labels" in text, text[-3000:]
        assert "started pretrain job" in text, "dataset add starts pretraining"
        bob = re.search(r"token for bob \(annotator\), shown only now:\n(\S+)\n", text)
        assert bob, text[-3000:]
        headers = {"Authorization": f"Bearer {bob.group(1)}"}
        alice = re.search(r"token for alice \(admin\), shown only now:\n(\S+)\n", text)
        assert alice, text[-3000:]
        admin = {"Authorization": f"Bearer {alice.group(1)}"}

        def open_proposals() -> int:
            assert proc.poll() is None, log.read_text(errors="replace")[-5000:]
            page = httpx.get(
                f"{base}/datasets/1/tasks",
                params={"kind": "proposal", "status": "open", "limit": 1},
                headers=admin,
                timeout=30,
            ).json()
            return int(page["total"])

        wait_for(open_proposals, "proposals after pretraining", timeout=900, every=2)
        listed = httpx.get(
            f"{base}/datasets/1/tasks",
            params={"kind": "proposal", "status": "open", "limit": 1},
            headers=admin,
            timeout=30,
        ).json()["items"]
        assert listed[0]["model_version_id"] is not None, "a model proposed it"
        handed = httpx.post(f"{base}/datasets/1/tasks/next", headers=headers, timeout=30).json()
        # an annotator is handed a task without the model's figures (they would bias the label)
        assert handed["task"] is not None and handed["task"]["kind"] == "proposal", handed
        assert handed["task"]["model_version_id"] is None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    print(f"README commands: {log.read_text(errors='replace').count('+ ')} run; log {log}")
