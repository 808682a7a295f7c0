"""The dashboard's annotators panel in a real browser, over the genEM3 disagreement file.

genEM3's test set holds 95 patches its two annotators, AK and Flo, judged differently. The
file is imported through the API into a dataset with genEM3's bounding box; the panel must
show both annotators, their kappa with its 95% interval over the 95 patches, alpha, and say
why their reliability cannot be estimated (two annotators: who is right is unknown)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from server.auth import create_token
from server.datasets.service import register_dataset
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope
from tests.processes import admin_api, api_server
from tests.server.test_label_import import DATASET_NAME, DISAGREEMENT_NML, write_genem3_dataset
from tests.web.conftest import Site, embedded_env, shoot


def _signed(x: float) -> str:
    """How the panel writes a figure: a real minus sign, two decimals."""
    sign = "\u2212" if x < 0 else ""
    return f"{sign}{abs(x):.2f}"


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, dict[str, Any]]]:
    """A served site with the genEM3 dataset and its disagreement file imported through the
    API: (site, the annotators report as the API answers it)."""
    root = tmp_path_factory.mktemp("annotators-web")
    url = f"sqlite:///{root / 'db.sqlite'}"
    migrate.upgrade(url)
    path = write_genem3_dataset(root / DATASET_NAME)
    engine = make_engine(url)
    with session_scope(make_sessionmaker(engine)) as session:
        _, admin = create_token(session, name="ada", role="admin")
        _, annotator = create_token(session, name="bob", role="annotator")
        dataset_id = register_dataset(session, name=DATASET_NAME, path=str(path), stats_sample=4).id
    engine.dispose()
    env = embedded_env(url, root)
    with api_server(env, log=root / "api.log") as base:
        http = admin_api(base, admin)
        r = http.post(
            f"/datasets/{dataset_id}/labels/import",
            files={"file": (DISAGREEMENT_NML.name, DISAGREEMENT_NML.read_bytes())},
        )
        assert r.status_code == 200, r.text
        assert r.json()["added_by_annotator"] == {"AK": 95, "Flo": 95}
        report = http.get(f"/datasets/{dataset_id}/annotators").json()
        yield Site(base, url, admin, annotator, annotator, dataset_id, {}), report


def test_the_panel_shows_ak_and_flo_with_their_kappa_and_its_interval(
    imported: tuple[Site, dict[str, Any]], open_page: Any
) -> None:
    from playwright.sync_api import expect

    site, report = imported
    (pair,) = report["pairs"]
    kappa = pair["kappa"]
    assert kappa["value"] == pytest.approx(-0.907, abs=5e-4) and kappa["n"] == 95
    lo, hi = kappa["interval"]

    page, errors = open_page(site, site.annotator, (1280, 800), "/dashboard")
    row = page.locator("#agreement-pairs tr[data-pair='AK|Flo']")
    expect(row).to_contain_text("AK · Flo", timeout=30_000)
    expect(row.locator("td").nth(1)).to_have_text(
        f"{_signed(kappa['value'])} [{_signed(lo)} to {_signed(hi)}]"
    )
    expect(row.locator("td").nth(2)).to_have_text("95")
    assert _signed(kappa["value"]) == "\u22120.91"

    people = page.locator("#agreement-annotators tbody tr")
    expect(people).to_have_count(2)
    ak = page.locator("#agreement-annotators tr[data-annotator='AK']")
    expect(ak).to_contain_text("95 (58 / 37)")
    expect(ak.locator("td").nth(3)).to_have_text("0.50 (95)")
    expect(ak.locator("td").nth(4)).to_contain_text("only two annotators share patches")
    flo = page.locator("#agreement-annotators tr[data-annotator='Flo']")
    expect(flo).to_contain_text("95 (37 / 58)")

    alpha = report["alpha"]
    expect(page.locator("#agreement-alpha")).to_contain_text(
        f"Krippendorff's alpha: {_signed(alpha['value'])}"
    )
    expect(page.locator("#agreement-alpha")).to_contain_text("over 95 patches")
    page.locator("#agreement-title").scroll_into_view_if_needed()
    shoot(page, "dashboard-annotators", (1280, 800))
    assert errors == []
