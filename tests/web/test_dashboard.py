"""The dashboard in a real browser: honest metrics, activation behind a confirmation, unpin."""

from __future__ import annotations

import re
from typing import Any

from tests.web.conftest import Site


def _row(page: Any, version: int) -> Any:
    return page.locator(f"#versions tr[data-version='{version}']")


def test_dashboard_opens_on_the_active_version_and_never_plots_a_missing_metric(
    site: Site, open_page: Any
) -> None:
    from playwright.sync_api import expect

    v = site.versions
    page, errors = open_page(site, site.annotator, (1280, 800), "/dashboard")
    expect(page.locator("#versions tbody tr")).to_have_count(5)
    expect(_row(page, v["best"])).to_have_class(re.compile("selected"))
    expect(page.locator("#pr text.title")).to_contain_text(f"version {v['best']}")

    # the version trained before the audit set had artifacts: no numbers, least of all 0.00
    unmeasured = _row(page, v["unmeasured"])
    expect(unmeasured.locator(".na", has_text="not enough audit labels")).to_have_count(3)
    expect(unmeasured).not_to_contain_text("0.00")
    expect(unmeasured).to_contain_text("0 artifacts")
    # per version: audit size, artifacts, interval
    expect(_row(page, v["best"])).to_contain_text("100 (10 artifacts)")
    expect(_row(page, v["best"])).to_contain_text("0.84 [0.78\u20130.90]")
    expect(_row(page, v["worse"]).locator(".held-back")).to_contain_text("held back")

    dots = page.locator("#learning circle[data-version]")
    expect(dots).to_have_count(6)  # F1 and PR-AUC of the three measured versions
    plotted = {dots.nth(i).get_attribute("data-version") for i in range(6)}
    assert str(v["unmeasured"]) not in plotted
    expect(page.locator("#learning-note")).to_contain_text("1 version(s) without enough audit")

    # keyboard: Tab to the row, Enter selects it; its PR chart says why it is empty
    unmeasured.focus()
    page.keyboard.press("Enter")
    expect(unmeasured).to_have_class(re.compile("selected"))
    expect(page.locator("#pr text.empty")).to_contain_text("not enough audit labels")
    expect(page.locator("#pr path")).to_have_count(0)
    expect(page.locator("#confusion")).to_contain_text("Not enough audit labels")
    assert errors == []


def test_activation_asks_first_and_unpin_returns_to_the_automatic_choice(
    site: Site, open_page: Any
) -> None:
    from playwright.sync_api import expect

    v = site.versions
    assert site.flags()[v["best"]] == (True, False) and site.flags()[v["worse"]] == (False, False)
    page, errors = open_page(site, site.admin, (1280, 800), "/dashboard")
    expect(page.locator("#versions tbody tr")).to_have_count(5)
    button = page.get_by_role("button", name=f"Activate version {v['first']}")
    button.click()
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(f"Activate version {v['first']} (classifier)?")
    expect(dialog.locator("tr", has_text="F1")).to_contain_text("0.62")
    expect(dialog.locator("tr", has_text="F1")).to_contain_text("0.84")
    expect(dialog.locator("tr", has_text="F1")).to_contain_text("\u22120.22")
    page.locator("#confirm-cancel").click()
    expect(dialog).to_be_hidden()
    page.wait_for_timeout(300)
    assert site.flags()[v["first"]] == (False, False), "cancel changes nothing"

    button.click()
    page.locator("#confirm-ok").click()
    expect(_row(page, v["first"]).locator(".active-flag")).to_contain_text("active, pinned")
    assert site.flags()[v["first"]] == (True, True)
    assert site.flags()[v["best"]] == (False, False)

    banner = page.locator("#pinned")
    expect(banner).to_contain_text(f"Version {v['first']} (classifier) is pinned")
    banner.get_by_role("button", name=re.compile("unpin version", re.IGNORECASE)).click()
    expect(banner).to_be_hidden()
    # back to the rule: the best one, not the newest (held back, worse beyond its interval)
    expect(_row(page, v["best"]).locator(".active-flag")).to_have_text("● active")
    assert site.flags()[v["best"]] == (True, False)
    assert site.flags()[v["first"]] == (False, False)
    assert site.flags()[v["worse"]] == (False, False)
    assert errors == []
