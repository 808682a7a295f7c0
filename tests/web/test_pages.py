"""The labeling page and the dashboard in a real browser (headless Chromium via Playwright)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from server.auth import create_token
from server.datasets.service import grid_of, register_dataset
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope
from server.db.tables import AnnotationTask, Label, ModelVersion
from server.sim.synth import make_synthetic_dataset
from tests.processes import api_server, service_env

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "tests" / "artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium (apt-get install chromium)"
)


@dataclass
class Site:
    base: str
    db_url: str
    admin: str
    annotator: str
    dataset_id: int
    versions: list[int]


def _metrics(f1: float, seed: int, origins: list[tuple[int, int, int]]) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    recall = np.linspace(0, 1, 11)
    precision = np.clip(1 - recall * (1 - f1) * 1.5, 0, 1)
    pick = [
        {"x": x, "y": y, "z": z, "p_artifact": float(rng.random()), "label": lab}
        for (x, y, z), lab in zip(origins, ["artifact", "clean", "artifact", "clean"], strict=False)
    ]
    return {
        "audit": {
            "n": 100,
            "accuracy": 0.95,
            "precision": f1,
            "recall": f1,
            "f1": f1,
            "pr_auc": f1 + 0.03,
            "roc_auc": 0.97,
            "precision_at_recall_0.9": f1 - 0.1,
            "threshold": 0.5,
            "confusion": [[88, 2], [3, 7]],
            "pr_curve": {"recall": recall.tolist(), "precision": precision.tolist()},
            "examples": {
                "true_positive": pick[:1],
                "false_positive": pick[1:2],
                "false_negative": pick[2:3],
                "most_uncertain": pick[3:4],
            },
        },
        "history": [
            {"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1)} for e in range(8)
        ],
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("web")
    url = f"sqlite:///{root / 'db.sqlite'}"
    migrate.upgrade(url)
    make_synthetic_dataset(root / "ds", seed=1, shape=(700, 3), artifact_rate=3.0)
    engine = make_engine(url)
    with session_scope(make_sessionmaker(engine)) as session:
        _, admin = create_token(session, name="ada", role="admin")
        _, annotator = create_token(session, name="bob", role="annotator")
        dataset = register_dataset(session, name="web", path=str(root / "ds"))
        grid = grid_of(dataset)
        origins = [tuple(int(v) for v in o) for o in grid.origins(list(range(len(grid))))]
        for i, (x, y, z) in enumerate(origins[:16]):
            session.add(
                AnnotationTask(
                    dataset_id=dataset.id,
                    kind="proposal",
                    grid_index=i,
                    x=x,
                    y=y,
                    z=z,
                    w=140,
                    h=140,
                    rank=i,
                    reason="uncertain",
                    status="open",
                    p_artifact=0.5,
                )
            )
        ae = ModelVersion(
            dataset_id=dataset.id,
            kind="ae",
            status="ready",
            active=True,
            metrics={"history": [{"epoch": e, "train_loss": 0.5 / (e + 1)} for e in range(5)]},
        )
        session.add(ae)
        session.flush()
        first = ModelVersion(
            dataset_id=dataset.id,
            kind="classifier",
            parent_id=ae.id,
            status="ready",
            label_count=50,
            metrics=_metrics(0.62, 1, origins[20:]),
        )
        second = ModelVersion(
            dataset_id=dataset.id,
            kind="classifier",
            parent_id=ae.id,
            status="ready",
            label_count=100,
            active=True,
            metrics=_metrics(0.84, 2, origins[24:]),
        )
        session.add_all([first, second])
        session.flush()
        dataset_id, versions = dataset.id, [first.id, second.id]
    engine.dispose()
    env = service_env(
        ARTIFACT_LOOP_DATABASE_URL=url,
        ARTIFACT_LOOP_DATA_DIR=str(root / "data"),
        ARTIFACT_LOOP_BROKER_URL="filesystem://",
    )
    with api_server(env, log=root / "api.log") as base:
        yield Site(base, url, admin, annotator, dataset_id, versions)


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


def _page(browser, site: Site, token: str, size: tuple[int, int]):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": size[0], "height": size[1]})
    context.add_init_script(f"localStorage.setItem('al_token', '{token}');")
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


def _shoot(page, name: str, size: tuple[int, int]) -> Path:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}-{size[0]}x{size[1]}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def _labels(site: Site) -> list[Label]:
    engine = make_engine(site.db_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            rows = list(session.scalars(select(Label).order_by(Label.id)))
            session.expunge_all()
            return rows
    finally:
        engine.dispose()


def test_annotator_labels_ten_patches_with_the_keyboard(browser, site: Site) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page, errors = _page(browser, site, site.annotator, (1280, 800))
    page.goto(f"{site.base}/label")
    expect(page.locator("#patch")).to_have_attribute("src", __import__("re").compile("^blob:"))
    keys = ["c", "a", "c", "c", "3", "c", "a", "c", "c", "c"]
    shown: list[str] = []
    for i, key in enumerate(keys, start=1):
        shown.append(page.locator("#pos").inner_text())
        page.keyboard.press(key)
        expect(page.locator("#count")).to_have_text(str(i))
    page.keyboard.press("u")
    expect(page.locator("#count")).to_have_text("9")
    expect(page.locator("#pos")).to_have_text(shown[-1])
    page.keyboard.press("a")
    expect(page.locator("#count")).to_have_text("10")
    _shoot(page, "label", (1280, 800))
    page.set_viewport_size({"width": 1920, "height": 1080})
    _shoot(page, "label", (1920, 1080))

    labels = _labels(site)
    expected = [
        "clean",
        "artifact",
        "clean",
        "clean",
        "artifact",
        "clean",
        "artifact",
        "clean",
        "clean",
        "artifact",
    ]
    assert [lab.label for lab in labels] == expected
    assert labels[4].artifact_type == "scratch", "key 3 is the third artifact type"
    assert {lab.annotator for lab in labels} == {"bob"} and {lab.source for lab in labels} == {"ui"}
    assert [f"{lab.x}, {lab.y}, {lab.z}" for lab in labels] == shown
    assert len({lab.task_id for lab in labels}) == 10
    assert errors == []


def test_dashboard_shows_versions_charts_and_activation(browser, site: Site) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page, errors = _page(browser, site, site.admin, (1280, 800))
    page.goto(f"{site.base}/dashboard")
    rows = page.locator("#versions tbody tr")
    expect(rows).to_have_count(3)
    for chart in ("#learning", "#pr", "#loss"):
        expect(page.locator(f"{chart} path").first).to_be_attached()
    expect(page.locator("#confusion table")).to_be_visible()
    images = page.locator("#galleries img")
    expect(images.first).to_have_attribute("src", __import__("re").compile("^blob:"))
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#galleries img')).every(i => i.complete && i.naturalWidth > 0)"
    )
    _shoot(page, "dashboard", (1280, 800))
    page.set_viewport_size({"width": 1920, "height": 1080})
    _shoot(page, "dashboard", (1920, 1080))

    older = site.versions[0]
    page.locator(f"tr[data-version='{older}'] button.activate").click()
    expect(page.locator(f"tr[data-version='{older}'] .active-flag")).to_contain_text("●")
    engine = make_engine(site.db_url)
    with session_scope(make_sessionmaker(engine)) as session:
        flags = {v.id: v.active for v in session.scalars(select(ModelVersion))}
    engine.dispose()
    assert flags[older] and not flags[site.versions[1]]
    assert errors == []
