"""The dashboard in a real browser: honest metrics, activation behind a confirmation, unpin."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from server.db.tables import Job, ModelVersion
from tests.web.conftest import Site, shoot


def _row(page: Any, version: int) -> Any:
    return page.locator(f"#versions tr[data-version='{version}']")


def _audit(site: Site, version: int) -> dict[str, Any]:
    return site.query(lambda s: s.get(ModelVersion, version).metrics["audit"])


def _signed(x: float) -> str:
    sign = "+" if x >= 0 else "\u2212"
    return f"{sign}{abs(x):.2f}"


def _difference(site: Site, version: int, against: int, name: str) -> str:
    """How the page writes the paired difference of two versions' ``name``."""
    d = _audit(site, version)["paired"][str(against)][name]
    lo, hi = d["interval"]
    return f"{_signed(d['difference'])} [{_signed(lo)} to {_signed(hi)}]"


def test_dashboard_opens_on_the_active_version_and_never_plots_a_missing_metric(
    site: Site, open_page: Any
) -> None:
    from playwright.sync_api import expect

    v = site.versions
    page, errors = open_page(site, site.annotator, (1280, 800), "/dashboard")
    expect(page.locator("#versions tbody tr")).to_have_count(5)
    expect(_row(page, v["best"])).to_have_class(re.compile("selected"))
    expect(page.locator("#pr text.title")).to_contain_text(f"version {v['best']}")

    # measured on 2 audit artifacts (its old bootstrap collapsed to 1.00 [1.00-1.00]): words
    unmeasured = _row(page, v["unmeasured"])
    expect(unmeasured.locator(".na", has_text="not enough audit artifacts (2)")).to_have_count(3)
    expect(unmeasured).not_to_contain_text("1.00")
    expect(unmeasured).not_to_contain_text("0.00")
    expect(unmeasured).to_contain_text("60 (2 artifacts)")
    expect(unmeasured).to_contain_text("not measured on the same patches")
    # per version: audit size, artifacts, interval; the paired difference to the active one
    expect(_row(page, v["best"])).to_contain_text("200 (20 artifacts)")
    best = _audit(site, v["best"])
    lo, hi = best["intervals"]["f1"]
    expect(_row(page, v["best"])).to_contain_text(f"{best['f1']:.2f} [{lo:.2f}\u2013{hi:.2f}]")
    first = _row(page, v["first"]).locator(".vs-active")
    expect(first).to_contain_text(_difference(site, v["first"], v["best"], "pr_auc"))
    assert _difference(site, v["first"], v["best"], "pr_auc").startswith("\u2212")
    expect(first).to_contain_text("same 200 audit patches, 20 artifacts")
    held = _row(page, v["worse"]).locator(".held-back")
    expect(held).to_contain_text("held back")
    expect(held).to_contain_text("paired 95% interval")
    expect(held).to_contain_text("200 audit patches (20 artifacts)")

    dots = page.locator("#learning circle[data-version]")
    expect(dots).to_have_count(6)  # F1 and PR-AUC of the three measured versions
    plotted = {dots.nth(i).get_attribute("data-version") for i in range(6)}
    assert str(v["unmeasured"]) not in plotted
    note = page.locator("#learning-note")
    expect(note).to_contain_text("same audit set: 200 patches, 20 artifacts")
    expect(note).to_contain_text("1 version(s) not plotted: not enough audit artifacts (2)")
    expect(note).to_contain_text(f"Newest (version {v['worse']}) against active")
    # the PR chart's axes run from 0 to 1, whatever the curve
    ticks = page.locator("#pr text").all_text_contents()
    assert "1.00" in ticks and "2.00" not in ticks

    # keyboard: Tab to the row, Enter selects it; its charts and galleries say why
    unmeasured.focus()
    page.keyboard.press("Enter")
    expect(unmeasured).to_have_class(re.compile("selected"))
    expect(page.locator("#pr text.empty")).to_contain_text("not enough audit artifacts (2)")
    expect(page.locator("#pr path")).to_have_count(0)
    expect(page.locator("#confusion")).to_contain_text("Nothing measured")
    expect(page.locator("#galleries")).to_contain_text("not enough audit artifacts (2)")
    expect(page.locator("#galleries")).not_to_contain_text("False positives")
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
    f1 = dialog.locator("tr", has_text="F1")
    expect(f1).to_contain_text(f"{_audit(site, v['first'])['f1']:.2f}")
    expect(f1).to_contain_text(f"{_audit(site, v['best'])['f1']:.2f}")
    # the paired difference on the same patches, with its interval and the counts
    expect(f1.locator(".difference")).to_have_text(_difference(site, v["first"], v["best"], "f1"))
    expect(dialog.locator(".audit-counts")).to_contain_text("same 200 audit patches, 20 artifacts")
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
    # and the pool is scored again with the version that is active now
    scored = site.query(
        lambda s: [j.params for j in s.scalars(select(Job).where(Job.kind == "score"))]
    )
    assert any(p["model_version_id"] == v["best"] for p in scored)
    assert errors == []


def test_a_version_measured_on_few_artifacts_beside_one_measured_on_more(
    site: Site, open_page: Any
) -> None:
    """The demo's situation: the dialog compares a version measured on 2 audit artifacts
    with the active one measured on 20: no difference, no collapsed interval, both counts."""
    from playwright.sync_api import expect

    v = site.versions
    page, errors = open_page(site, site.admin, (1280, 800), "/dashboard")
    expect(_row(page, v["best"]).locator(".active-flag")).to_have_text("\u25cf active")
    shots = [shoot(page, "dashboard", (1280, 800))]
    page.get_by_role("button", name=f"Activate version {v['unmeasured']}").click()
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(f"Version {v['unmeasured']}: not enough audit artifacts (2)")
    expect(dialog.locator(".audit-counts")).to_contain_text(
        f"version {v['unmeasured']}: 60 audit patches, 2 artifacts; "
        f"version {v['best']}: 200 audit patches, 20 artifacts"
    )
    expect(dialog.locator(".difference").first).to_have_text("not measured on the same patches")
    expect(dialog).not_to_contain_text("1.00 [1.00")
    shots.append(shoot(page, "dashboard-dialog-few-artifacts", (1280, 800)))
    page.locator("#confirm-cancel").click()
    # beside it, a version measured on the same 20 artifacts: the paired difference
    page.get_by_role("button", name=f"Activate version {v['worse']}").click()
    expect(dialog.locator(".difference").first).to_contain_text(" to ")
    expect(dialog.locator(".audit-counts")).to_contain_text("same 200 audit patches, 20 artifacts")
    for cell in dialog.locator("td").all_text_contents():
        lo_hi = re.findall(r"\[(\d\.\d\d)\u2013(\d\.\d\d)\]", cell)
        assert all(lo != hi for lo, hi in lo_hi), cell  # no interval collapsed to a point
    shots.append(shoot(page, "dashboard-dialog-paired", (1280, 800)))
    page.locator("#confirm-cancel").click()
    assert all(p.is_file() for p in shots)
    assert errors == []


def test_the_review_list_resolves(site: Site, open_page: Any) -> None:
    """Open a flagged patch, label it, mark it resolved; the list says who and when."""
    import httpx
    from playwright.sync_api import expect

    headers = {"Authorization": f"Bearer {site.other}"}
    base = f"{site.base}/api/v1"
    task = httpx.post(f"{base}/datasets/{site.dataset_id}/tasks/next", headers=headers).json()
    task_id = task["task"]["id"]
    r = httpx.post(f"{base}/tasks/{task_id}/skip", json={"unsure": True}, headers=headers)
    assert r.status_code == 200, r.text
    page, errors = open_page(site, site.admin, (1280, 800), "/dashboard")
    row = page.locator(f"#review tr[data-task='{task_id}']")
    expect(row).to_contain_text("carol (")
    expect(row.locator(".review-status")).to_have_text("in the queue")
    row.get_by_role("button", name=re.compile("open patch")).click()
    panel = page.locator("#review-open")
    expect(panel.locator("img")).to_have_attribute("src", re.compile("^blob:"))
    panel.get_by_role("button", name="label artifact").click()
    expect(row).to_contain_text("ada: artifact")
    panel.get_by_role("button", name="mark resolved").click()
    expect(row.locator(".review-status")).to_contain_text("resolved by ada (")
    expect(panel).to_be_empty()
    labels = [lab for lab in site.labels() if lab.task_id == task_id]
    assert [(lab.annotator, lab.label) for lab in labels] == [("ada", "artifact")]
    assert errors == []
