"""axe-core on both pages (no serious or critical issue), and the screenshots for docs/."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.web.conftest import Site, axe_script, shoot

SIZES = [(1280, 800), (1920, 1080)]


def _axe(page: Any, source: str) -> list[dict[str, Any]]:
    page.add_script_tag(content=source)
    result = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))"
    )
    return [v for v in result if v["impact"] in ("serious", "critical")]


@pytest.mark.parametrize("size", SIZES)
def test_labeling_page_has_no_serious_axe_issue(
    site: Site, open_page: Any, size: tuple[int, int]
) -> None:
    from playwright.sync_api import expect

    source = axe_script()
    page, errors = open_page(site, site.annotator, size, "/label")
    expect(page.locator("#patch")).to_have_attribute("src", re.compile("^blob:"))
    for key in ("c", "a", "2"):  # a few decisions in the recent strip
        count = int(page.locator("#count").inner_text())
        page.keyboard.press(key)
        expect(page.locator("#count")).to_have_text(str(count + 1))
    page.wait_for_function("document.querySelectorAll('#recent img[src^=\"blob:\"]').length >= 3")
    page.wait_for_timeout(300)
    shoot(page, "label", size)
    assert _axe(page, source) == []
    # the type guide: definitions, and examples from the dataset's own labels that someone
    # confirmed: the horseshoe given above alone is not; one two annotators agree on is
    for secret in (site.annotator, site.other):
        r = httpx.post(
            f"{site.base}/api/v1/datasets/{site.dataset_id}/labels",
            json={"x": 0, "y": 0, "z": 0, "label": "artifact", "artifact_type": "horseshoe"},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert r.status_code == 201, r.text
    page.locator("#type-guide summary").click()
    expect(page.locator("#type-defs [data-type='horseshoe'] img").first).to_have_attribute(
        "src", re.compile("^blob:")
    )
    expect(page.locator("#type-defs [data-type='horseshoe'] img")).to_have_count(1)
    expect(page.locator("#type-defs [data-type='defocus']")).to_contain_text(
        "No agreed or reviewed example"
    )
    assert _axe(page, source) == [], "the type guide"
    page.keyboard.press("?")
    assert _axe(page, source) == [], "the help overlay"
    # signed out: only the sign-in box
    page.keyboard.press("Escape")
    page.locator("#signout").click()
    assert _axe(page, source) == []
    assert errors == []


@pytest.mark.parametrize("size", SIZES)
def test_dashboard_has_no_serious_axe_issue(
    site: Site, open_page: Any, size: tuple[int, int]
) -> None:
    from playwright.sync_api import expect

    source = axe_script()
    page, errors = open_page(site, site.admin, size, "/dashboard")
    expect(page.locator("#versions tbody tr")).to_have_count(5)
    expect(page.locator("#galleries img").first).to_have_attribute("src", re.compile("^blob:"))
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#galleries img'))"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    shoot(page, "dashboard", size)
    assert _axe(page, source) == []
    page.get_by_role("button", name=f"Activate version {site.versions['worse']}").click()
    expect(page.locator("#confirm")).to_be_visible()
    assert _axe(page, source) == [], "the confirmation"
    page.locator("#confirm-cancel").click()
    assert errors == []
