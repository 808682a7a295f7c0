"""An admin excludes an annotator from the dashboard's annotators panel, in a real browser:
the panel says so, a training is queued, and the consensus no longer counts their labels.

The genEM3 disagreement file (AK and Flo disagree on all 95 patches) is imported into a
dataset that has an autoencoder, so a changed weight queues a training."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from server.auth import create_token
from server.datasets.service import register_dataset
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope
from server.db.tables import ModelVersion
from tests.processes import admin_api, api_server
from tests.server.test_label_import import DATASET_NAME, DISAGREEMENT_NML, write_genem3_dataset
from tests.web.conftest import Site, embedded_env, shoot


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("weights-web")
    url = f"sqlite:///{root / 'db.sqlite'}"
    migrate.upgrade(url)
    path = write_genem3_dataset(root / DATASET_NAME)
    engine = make_engine(url)
    with session_scope(make_sessionmaker(engine)) as session:
        _, admin = create_token(session, name="ada", role="admin")
        _, annotator = create_token(session, name="bob", role="annotator")
        dataset_id = register_dataset(session, name=DATASET_NAME, path=str(path), stats_sample=4).id
        session.add(ModelVersion(dataset_id=dataset_id, kind="ae", status="ready", active=True))
    engine.dispose()
    env = embedded_env(url, root)
    with api_server(env, log=root / "api.log") as base:
        r = admin_api(base, admin).post(
            f"/datasets/{dataset_id}/labels/import",
            files={"file": (DISAGREEMENT_NML.name, DISAGREEMENT_NML.read_bytes())},
        )
        assert r.status_code == 200, r.text
        yield Site(base, url, admin, annotator, annotator, dataset_id, {})


def _consensus(site: Site) -> list[dict[str, Any]]:
    http = admin_api(site.base, site.admin)
    r = http.get(f"/datasets/{site.dataset_id}/consensus", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_an_annotator_sees_the_weights_but_no_controls(site: Site, open_page: Any) -> None:
    from playwright.sync_api import expect

    page, errors = open_page(site, site.annotator, (1280, 800), "/dashboard")
    flo = page.locator("#agreement-annotators tr[data-annotator='Flo']")
    expect(flo.locator("td.label-weight")).to_have_text("1", timeout=30_000)
    expect(page.locator("#agreement-annotators button.exclude-annotator")).to_have_count(0)
    assert errors == []


def test_an_admin_excludes_flo_and_training_follows_ak_alone(site: Site, open_page: Any) -> None:
    from playwright.sync_api import expect

    before = _consensus(site)
    assert len(before) == 95 and all(p["aggregation"] == "consensus" for p in before)

    page, errors = open_page(site, site.admin, (1280, 800), "/dashboard")
    flo = page.locator("#agreement-annotators tr[data-annotator='Flo']")
    button = flo.locator("button.exclude-annotator")
    expect(button).to_contain_text("Exclude", timeout=30_000)
    button.click()
    expect(flo.locator("span.weight")).to_have_text("0 (excluded)")
    expect(flo.locator("button.exclude-annotator")).to_contain_text("Include")
    expect(page.locator("#live")).to_contain_text("Flo excluded; training queued (job")
    ak = page.locator("#agreement-annotators tr[data-annotator='AK']")
    expect(ak.locator("span.weight")).to_have_text("1")
    flo.scroll_into_view_if_needed()
    shoot(page, "dashboard-annotator-excluded", (1280, 800))

    # training follows: a training waits (the one the import queued takes the change in),
    # and every verdict is AK's alone
    http = admin_api(site.base, site.admin)
    trains = http.get("/jobs", params={"dataset_id": site.dataset_id, "kind": "train"}).json()
    (job,) = trains["items"]
    assert job["state"] == "queued"
    expect(page.locator("#live")).to_contain_text(f"training queued (job {job['id']})")
    for position in _consensus(site):
        said = {v["annotator"]: v for v in position["labels"]}
        assert not said["Flo"]["counted"] and said["Flo"]["annotator_weight"] == 0.0
        assert said["AK"]["counted"] and position["verdict"] == said["AK"]["label"]
        assert position["training_weight"] == 1.0, "one counted label: full weight"

    # and back: a weight set in the field
    flo.locator("input.weight-input").fill("0.5")
    flo.locator("button.set-weight").click()
    expect(flo.locator("span.weight")).to_have_text("0.50")
    expect(flo.locator("button.exclude-annotator")).to_contain_text("Exclude")
    assert all(v["counted"] for p in _consensus(site) for v in p["labels"])
    assert errors == []
