"""The dashboard's suspect-label panel in a real browser: each suspect with the label given,
the model's view and the state of its re-label task; "view" shows the patch."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from server.auth import create_token
from server.datasets.service import register_dataset
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope
from server.db.tables import AnnotationTask, Label, LabelSuspect, ModelVersion
from tests.conftest import write_test_dataset
from tests.processes import api_server
from tests.web.conftest import Site, embedded_env, shoot


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A served site with two suspect labels, one of them offered again as a re-label task
    and already answered by another annotator."""
    root = tmp_path_factory.mktemp("suspects-web")
    url = f"sqlite:///{root / 'db.sqlite'}"
    migrate.upgrade(url)
    write_test_dataset(root / "ds", shape=(560, 420, 4))
    engine = make_engine(url)
    with session_scope(make_sessionmaker(engine)) as session:
        _, admin = create_token(session, name="ada", role="admin")
        bob_token, annotator = create_token(session, name="bob", role="annotator")
        carol_token, _ = create_token(session, name="carol", role="annotator")
        bob, carol = bob_token.annotator, carol_token.annotator
        ds = register_dataset(session, name="suspects", path=str(root / "ds"), stats_sample=4)
        version = ModelVersion(dataset_id=ds.id, kind="classifier", status="ready")
        session.add(version)
        session.flush()

        def label(x: int, verdict: str, who: Any, task_id: int | None = None) -> Label:
            row = Label(
                dataset_id=ds.id, x=x, y=0, z=1, w=140, h=140, label=verdict,
                annotator=who.name, annotator_id=who.id, source="ui", task_id=task_id,
            )  # fmt: skip
            session.add(row)
            session.flush()
            return row

        strong, weak = label(0, "clean", bob), label(140, "artifact", bob)
        task = AnnotationTask(
            dataset_id=ds.id, kind="proposal", grid_index=None, x=0, y=0, z=1, w=140, h=140,
            reason="relabel", status="labelled", lease_holder_id=carol.id, labels_wanted=1,
        )  # fmt: skip
        session.add(task)
        session.flush()
        label(0, "artifact", carol, task_id=task.id)
        session.add_all(
            [
                LabelSuspect(dataset_id=ds.id, label_id=strong.id, model_version_id=version.id,
                             p_artifact=0.97, p_given=0.04, score=0.96),
                LabelSuspect(dataset_id=ds.id, label_id=weak.id, model_version_id=version.id,
                             p_artifact=0.21, p_given=0.3, score=0.7),
            ]
        )  # fmt: skip
        ids = {"dataset": ds.id, "version": version.id, "strong": strong.id, "weak": weak.id}
    engine.dispose()
    env = embedded_env(url, root)
    with api_server(env, log=root / "api.log") as base:
        yield Site(base, url, admin, annotator, annotator, ids["dataset"], ids)


def test_the_panel_lists_suspects_with_the_models_view_and_the_second_look(
    site: Site, open_page: Any
) -> None:
    from playwright.sync_api import expect

    page, errors = open_page(site, site.admin, (1280, 800), "/dashboard")
    rows = page.locator("#suspects-table tbody tr")
    expect(rows).to_have_count(2, timeout=30_000)
    strong = page.locator(f"#suspects-table tr[data-label='{site.versions['strong']}']")
    expect(strong.locator("td").nth(0)).to_have_text("0, 0, 1")
    expect(strong.locator("td").nth(1)).to_have_text("bob: clean")
    expect(strong.locator("td").nth(2)).to_have_text("0.97")
    expect(strong.locator("td").nth(3)).to_have_text("0.04")
    expect(strong.locator("td").nth(4)).to_have_text("0.96")
    expect(strong.locator("td").nth(5)).to_have_text(f"v{site.versions['version']}")
    expect(strong.locator(".relabel-state")).to_have_text("carol: artifact")
    weak = page.locator(f"#suspects-table tr[data-label='{site.versions['weak']}']")
    expect(weak.locator(".relabel-state")).to_have_text("not offered yet")
    expect(rows.first).to_have_attribute("data-label", str(site.versions["strong"]))
    expect(page.locator("#suspects")).to_contain_text("2 suspect labels")

    strong.locator(".open-suspect").click()
    preview = page.locator("#suspects-open")
    expect(preview.locator("h4")).to_have_text("Patch 0, 0, 1")
    expect(preview).to_contain_text("bob said clean; the model: p(artifact) 0.97")
    expect(preview.locator("img")).to_have_attribute("src", re.compile("^blob:"))
    page.locator("#suspects-title").scroll_into_view_if_needed()
    shoot(page, "dashboard-suspects", (1280, 800))
    assert errors == []
