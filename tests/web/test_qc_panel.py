"""The dashboard's re-imaging panel in a real browser, over a predict job the service ran.

A synthetic 4 x 4 montage with one missing field (section 1) and a charging region over a
third of a section (section 2) is registered with a classifier trained to tell blank and
bright parts from tissue; a predict job is asked for through the API and run by the same
code a worker runs (plan, chunk jobs, QC at the end). The panel must then show the QC plot
along z with the two sections in red and the flagged fields counted, and the re-image list
with each field or section and the reason the QC gave."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.checkpoint import save_checkpoint
from server.auth import create_token
from server.datasets.service import register_dataset
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope
from server.db.tables import ModelVersion
from server.jobs.runner import InlineSender, run_job
from server.runtime import Runtime
from server.settings import Settings
from server.sim.montage import paint_charging, paint_missing_field
from server.sim.synth import make_synthetic_dataset
from server.versions.service import refresh_active_flags
from server.wklib import wk
from tests.processes import admin_api, api_server, service_env
from tests.server.test_predict_fields import _classifier
from tests.web.conftest import Site, shoot

SIDE, SECTIONS = 840, 4
MISSING_Z, CHARGING_Z, MISSING_FIELD = 1, 2, (2, 1)
NORM = (128.0, 40.0)  # the normalisation the classifier was trained with


def _montage(path: Path) -> None:
    make_synthetic_dataset(path, seed=5, shape=(SIDE, SECTIONS), artifact_rate=0.0)
    color = wk.Dataset.open(path).get_layer("color").get_mag(1)
    sections = color.read(absolute_offset=(0, 0, 0), size=(SIDE, SIDE, SECTIONS))[0]
    missing = sections[:, :, MISSING_Z].T.copy()
    paint_missing_field(missing, grid=(4, 4), field=MISSING_FIELD)
    charging = sections[:, :, CHARGING_Z].T.copy()
    paint_charging(charging, rng=np.random.default_rng(3), share=0.36)
    for z, image in ((MISSING_Z, missing), (CHARGING_Z, charging)):
        color.write(image.T[None, :, :, None], absolute_offset=(0, 0, z), allow_unaligned=True)
    # a lab's dataset has no ground truth (and this one's would name none of the painted)
    (path / "ground_truth.csv").unlink()


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, dict[str, Any]]]:
    """A served site whose one dataset has a finished predict job: (site, the job as the API
    answers it)."""
    root = tmp_path_factory.mktemp("qc-web")
    url = f"sqlite:///{root / 'db.sqlite'}"
    migrate.upgrade(url)
    _montage(root / "ds")
    classifier = _classifier(root / "training")
    engine = make_engine(url)
    with session_scope(make_sessionmaker(engine)) as session:
        _, admin = create_token(session, name="ada", role="admin")
        dataset = register_dataset(session, name="montage 7", path=str(root / "ds"))
        dataset.norm_mean, dataset.norm_std = NORM
        weights = root / "classifier.pt"
        save_checkpoint(weights, model=classifier, norm=NORM, extra={"temperature": 1.0})
        version = ModelVersion(
            dataset_id=dataset.id, kind="classifier", status="ready", label_count=100,
            weights_path=str(weights), config={"threshold": 0.5},
        )  # fmt: skip
        session.add(version)
        session.flush()
        refresh_active_flags(session, dataset_id=dataset.id)
        dataset_id, version_id = dataset.id, version.id
    engine.dispose()
    data_dir = root / "data"
    env = service_env(
        ARTIFACT_LOOP_DATABASE_URL=url,
        ARTIFACT_LOOP_DATA_DIR=str(data_dir),
        ARTIFACT_LOOP_BROKER_URL="filesystem://",
    )
    with api_server(env, log=root / "api.log") as base:
        http = admin_api(base, admin)
        asked = http.post(
            f"/datasets/{dataset_id}/jobs",
            json={"kind": "predict", "params": {"sections_per_chunk": 2}},
        )
        assert asked.status_code in (200, 201, 202), asked.text
        job_id = asked.json()["job"]["id"]
        # no worker listens on this site's queue: the worker's code runs the job here
        rt = Runtime.start(Settings(database_url=url, data_dir=data_dir))
        try:
            sender = InlineSender()
            assert run_job(rt, sender, job_id=job_id, worker="test")
            sender.run_pending(rt)
        finally:
            rt.close()
        job = http.get(f"/jobs/{job_id}").json()
        assert job["state"] == "succeeded", job.get("error")
        site = Site(base, url, admin, admin, admin, dataset_id, {"classifier": version_id})
        yield site, job


def test_the_qc_panel_shows_the_plot_along_z_and_the_flagged_fields_with_reasons(
    predicted: tuple[Site, dict[str, Any]], open_page: Any
) -> None:
    from playwright.sync_api import expect

    site, job = predicted
    result = job["result"]
    # what the predict step decided (tests/server/test_predict_fields.py checks it in depth)
    assert result["reimage_sections"] == [MISSING_Z, CHARGING_Z]

    page, errors = open_page(site, site.admin, (1280, 800), "/dashboard")
    expect(page.locator("#qc-note")).to_contain_text(
        f"predict job {job['id']}: 2 section(s) to re-image", timeout=30_000
    )
    expect(page.locator("#qc-note")).to_contain_text(result["output"])

    # the plot: one bar per section along z, red for the two on the re-image list
    plot = page.locator("#qc-plot")
    expect(plot.locator("text.title")).to_have_text("Prediction QC along z")
    bars = plot.locator("rect")
    expect(bars).to_have_count(SECTIONS)
    fills = [bars.nth(i).get_attribute("fill") for i in range(SECTIONS)]
    assert fills == ["#4cc3ff", "#ff5c5c", "#ff5c5c", "#4cc3ff"]
    by_z = {s["z"]: s for s in result["sections"]}
    for z in range(SECTIONS):
        tip = bars.nth(z).locator("title")
        expect(tip).to_contain_text(f"z {z}: {round(100 * by_z[z]['fraction'])}% above threshold")
    expect(bars.nth(MISSING_Z).locator("title")).to_contain_text(
        f"{len(by_z[MISSING_Z]['fields_flagged'])} field(s) to re-image"
    )
    expect(bars.nth(0).locator("title")).not_to_contain_text("field")
    expect(plot).to_contain_text("z 0")
    expect(plot).to_contain_text(f"z {SECTIONS - 1}")

    # the re-image list: each entry with where it is, what was found and why
    rows = page.locator("#qc-list tbody tr")
    expect(rows).to_have_count(len(result["reimage"]))
    fx, fy = MISSING_FIELD

    def at(z: int) -> Any:
        return rows.filter(has=page.locator("td:first-child", has_text=re.compile(f"^{z}$")))

    gone = at(MISSING_Z).filter(has_text=f"field {fx},{fy} (x 420, y 210, 210 x 210)")
    expect(gone).to_have_count(1)
    expect(gone.locator("td").nth(3)).to_have_text("missing")
    expect(gone.locator("td").nth(4)).to_contain_text("blank (missing field)")
    charged = at(CHARGING_Z)
    expect(charged).not_to_have_count(0)
    for entry in (e for e in result["reimage"] if e["z"] == CHARGING_Z):
        expect(charged.filter(has_text=entry["reason"])).not_to_have_count(0)
    expect(at(0)).to_have_count(0)  # the clean sections are not on the list
    expect(at(SECTIONS - 1)).to_have_count(0)
    page.locator("#qc-title").scroll_into_view_if_needed()
    shoot(page, "dashboard-qc", (1280, 800))
    assert errors == []


def test_a_dataset_without_a_prediction_says_so(
    predicted: tuple[Site, dict[str, Any]], open_page: Any, tmp_path: Path
) -> None:
    """Only succeeded predict jobs with a QC feed the panel: a new dataset shows none."""
    from playwright.sync_api import expect

    site, _job = predicted
    make_synthetic_dataset(tmp_path / "empty", seed=2, shape=(280, 2), artifact_rate=0.0)
    empty_id = site.query(
        lambda s: register_dataset(s, name="no prediction", path=str(tmp_path / "empty")).id
    )
    page, errors = open_page(site, site.admin, (1280, 800), "/dashboard")
    expect(page.locator("#qc-note")).to_contain_text("predict job", timeout=30_000)
    page.select_option("#dataset", str(empty_id))
    expect(page.locator("#qc-plot")).to_contain_text("no prediction yet", timeout=30_000)
    expect(page.locator("#qc-note")).to_have_text("")
    expect(page.locator("#qc-list tbody tr")).to_have_count(0)
    assert errors == []
