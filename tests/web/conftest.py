"""A served site for the browser tests: synthetic EM data, tasks, model versions, tokens."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from server.auth import create_token
from server.datasets.service import grid_of, register_dataset
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope
from server.db.tables import AnnotationTask, Label, ModelVersion
from server.sim.synth import make_synthetic_dataset
from server.versions.service import refresh_active_flags
from tests.processes import api_server, service_env

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "tests" / "artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WK_SERVER = "http://wk.example.org"
WK_DATASET = "sample_organization/web-ds"
TASKS = 60


def embedded_env(url: str, root: Path, **extra: str) -> dict[str, str]:
    """The environment of an embedded API for a page test: SQLite at ``url``, data under
    ``root / "data"``, the filesystem queue."""
    return service_env(
        ARTIFACT_LOOP_DATABASE_URL=url,
        ARTIFACT_LOOP_DATA_DIR=str(root / "data"),
        ARTIFACT_LOOP_BROKER_URL="filesystem://",
        **extra,
    )


@dataclass
class Site:
    base: str
    db_url: str
    admin: str
    annotator: str
    other: str
    dataset_id: int
    versions: dict[str, int]  # role in the story -> version id

    def query(self, fn: Any) -> Any:
        engine = make_engine(self.db_url)
        try:
            with session_scope(make_sessionmaker(engine)) as session:
                result = fn(session)
                session.expunge_all()
                return result
        finally:
            engine.dispose()

    def labels(self) -> list[Label]:
        return self.query(lambda s: list(s.scalars(select(Label).order_by(Label.id))))

    def flags(self) -> dict[int, tuple[bool, bool]]:
        return self.query(
            lambda s: {v.id: (v.active, v.pinned) for v in s.scalars(select(ModelVersion))}
        )


AUDIT_ARTIFACTS, AUDIT_CLEAN = 20, 180
# how far each version's artifacts stand out from the clean patches: the quality of its ranking
STORY_SEPARATION = {"first": 1.2, "best": 3.0, "worse": 0.3}


def legacy_few_artifacts() -> dict[str, Any]:
    """What the training step stored before versions were measured again: an audit set of 60
    patches with 2 artifacts, and a bootstrap that collapsed on a perfect ranking."""
    return {
        "audit": {
            "n": 60, "positives": 2, "negatives": 58, "f1": 1.0, "pr_auc": 1.0,
            "precision_at_recall_0.9": 1.0, "accuracy": 1.0, "threshold": 0.5,
            "confusion": [[58, 0], [0, 2]],
            "intervals": {"f1": [1.0, 1.0], "pr_auc": [1.0, 1.0],
                          "precision_at_recall_0.9": [1.0, 1.0]},
            "examples": {"false_positive": [{"x": 0, "y": 0, "z": 1, "p_artifact": 0.0,
                                             "label": "clean"}] * 8},
        },
        "history": [{"epoch": e, "train_loss": 1 / (e + 1)} for e in range(4)],
    }  # fmt: skip


def measured_story(
    origins: list[tuple[int, ...]], version_ids: dict[str, int]
) -> dict[int, dict[str, Any]]:
    """The audit reports that :mod:`server.pipeline.audit` records for the story's versions,
    all measured on the same audit set (its own code, on made-up probabilities)."""
    from types import SimpleNamespace

    from server.pipeline.audit import _reports

    rng = np.random.default_rng(11)
    truth = np.r_[np.ones(AUDIT_ARTIFACTS, bool), np.zeros(AUDIT_CLEAN, bool)]
    labels = [SimpleNamespace(x=x, y=y, z=z) for x, y, z in (origins * 4)[: truth.size]]
    noise = rng.normal(0, 1, truth.size)
    scored = {}
    for role, separation in STORY_SEPARATION.items():
        logit = truth * separation + noise + rng.normal(0, 0.6, truth.size) - 1.5
        scored[version_ids[role]] = (1 / (1 + np.exp(-logit)), 0.5)
    return _reports(labels, truth, scored, through=truth.size)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("web")
    url = f"sqlite:///{root / 'db.sqlite'}"
    migrate.upgrade(url)
    make_synthetic_dataset(root / "ds", seed=1, shape=(1120, 3), artifact_rate=3.0)
    engine = make_engine(url)
    with session_scope(make_sessionmaker(engine)) as session:
        _, admin = create_token(session, name="ada", role="admin")
        _, annotator = create_token(session, name="bob", role="annotator")
        _, other = create_token(session, name="carol", role="annotator")
        dataset = register_dataset(session, name="web", path=str(root / "ds"))
        dataset.settings = {"webknossos": {"dataset_id": WK_DATASET}}
        grid = grid_of(dataset)
        origins = [tuple(int(v) for v in o) for o in grid.origins(list(range(len(grid))))]
        middle = [o for o in origins if o[2] == 1]  # sections above and below exist
        ranks = np.random.default_rng(7).permutation(TASKS)  # the queue wanders the section
        for i, (x, y, z) in enumerate(middle[:TASKS]):
            session.add(
                AnnotationTask(
                    dataset_id=dataset.id, kind="proposal", grid_index=i, x=x, y=y, z=z,
                    w=140, h=140, rank=int(ranks[i]), reason="uncertain", status="open",
                    p_artifact=round(0.3 + 0.4 * ranks[i] / TASKS, 2),
                )
            )  # fmt: skip
        ae = ModelVersion(
            dataset_id=dataset.id,
            kind="ae",
            status="ready",
            metrics={"history": [{"epoch": e, "train_loss": 0.5 / (e + 1)} for e in range(5)]},
        )
        session.add(ae)
        session.flush()
        counts = {"unmeasured": 20, "first": 50, "best": 100, "worse": 150}
        versions = {}
        for role, count in counts.items():  # in the order they were trained
            version = ModelVersion(
                dataset_id=dataset.id, kind="classifier", parent_id=ae.id, status="ready",
                label_count=count, metrics=legacy_few_artifacts(), weights_path=f"/v/{role}.pt",
            )  # fmt: skip
            session.add(version)
            session.flush()
            versions[role] = version.id
        # the newer three measured again on the current audit set; the oldest keeps what it had
        for version_id, audit in measured_story(origins[120:], versions).items():
            measured = session.get(ModelVersion, version_id)
            assert measured is not None
            measured.metrics = {
                "audit": audit,
                "history": [
                    {"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1)}
                    for e in range(8)
                ],
            }
        session.flush()
        refresh_active_flags(session, dataset_id=dataset.id)
        dataset_id = dataset.id
    engine.dispose()
    env = service_env(
        ARTIFACT_LOOP_DATABASE_URL=url,
        ARTIFACT_LOOP_DATA_DIR=str(root / "data"),
        ARTIFACT_LOOP_BROKER_URL="filesystem://",
        ARTIFACT_LOOP_WK_URL=WK_SERVER,
    )
    with api_server(env, log=root / "api.log") as base:
        yield Site(base, url, admin, annotator, other, dataset_id, versions)


@pytest.fixture(scope="session")
def playwright_browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("needs Chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def open_page(playwright_browser: Any) -> Iterator[Any]:
    """``open_page(site, token, (w, h), path)`` -> (page, console errors)."""
    contexts: list[Any] = []

    def opener(site: Site, token: str | None, size: tuple[int, int], path: str) -> Any:
        context = playwright_browser.new_context(viewport={"width": size[0], "height": size[1]})
        contexts.append(context)
        if token is not None:
            context.add_init_script(
                f"if (!sessionStorage.getItem('seeded')) {{ localStorage.setItem('al_token', "
                f"'{token}'); sessionStorage.setItem('seeded', '1'); }}"
            )
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{site.base}{path}")
        return page, errors

    yield opener
    for context in contexts:
        context.close()


def shoot(page: Any, name: str, size: tuple[int, int]) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}-{size[0]}x{size[1]}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def axe_script() -> str:
    """axe-core's browser bundle: ``AXE_CORE_JS`` if set, else fetched once with ``npm pack``
    into the (ignored) test artifacts folder; never committed."""
    given = os.environ.get("AXE_CORE_JS")
    if given:
        return Path(given).read_text()
    cache = ROOT / "tests" / "artifacts" / "axe-core"
    bundle = cache / "package" / "axe.min.js"
    if not bundle.is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("axe-core needs npm (or AXE_CORE_JS pointing at axe.min.js)")
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [npm, "pack", "axe-core@4", "--pack-destination", str(cache)],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if done.returncode != 0:
            pytest.skip(f"npm pack axe-core failed: {done.stderr[-300:]}")
        archive = next(cache.glob("axe-core-*.tgz"))
        with tarfile.open(archive) as tar:
            tar.extract("package/axe.min.js", cache, filter="data")
    return bundle.read_text()
