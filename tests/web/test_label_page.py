"""The labeling page in a real browser (headless Chromium via Playwright)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from server.db.tables import AnnotationTask, TaskSkip
from tests.web.conftest import WK_DATASET, WK_SERVER, Site

BLOB = re.compile("^blob:")


def _ready(page: Any) -> str:
    """Wait for a patch on screen; its top-left ``x, y, z``."""
    from playwright.sync_api import expect

    expect(page.locator("#patch")).to_have_attribute("src", BLOB)
    expect(page.locator("#pos")).to_have_attribute("data-origin", re.compile(r"\d"))
    return str(page.locator("#pos").get_attribute("data-origin"))


def _origin(page: Any) -> str:
    return str(page.locator("#pos").get_attribute("data-origin"))


def test_annotator_labels_with_the_keyboard_and_undoes(site: Site, open_page: Any) -> None:
    from playwright.sync_api import expect

    page, errors = open_page(site, site.annotator, (1280, 800), "/label")
    _ready(page)
    before = len(site.labels())
    keys = ["c", "a", "c", "3", "c"]
    shown: list[str] = []
    for i, key in enumerate(keys, start=1):
        shown.append(_origin(page))
        page.keyboard.press(key)
        expect(page.locator("#count")).to_have_text(str(i))
    page.keyboard.press("u")
    expect(page.locator("#count")).to_have_text("4")
    expect(page.locator("#pos")).to_have_attribute("data-origin", shown[-1])
    page.keyboard.press("a")
    expect(page.locator("#count")).to_have_text("5")

    labels = site.labels()[before:]
    assert [lab.label for lab in labels] == ["clean", "artifact", "clean", "artifact", "artifact"]
    assert labels[3].artifact_type == "scratch", "key 3 is the third artifact type"
    assert {lab.annotator for lab in labels} == {"bob"} and {lab.source for lab in labels} == {"ui"}
    assert [f"{lab.x}, {lab.y}, {lab.z}" for lab in labels] == shown
    assert errors == []


def test_keys_held_with_ctrl_meta_or_alt_change_nothing(site: Site, open_page: Any) -> None:
    page, errors = open_page(site, site.annotator, (1280, 800), "/label")
    shown = _ready(page)
    before = len(site.labels())
    for combo in (
        "Control+c", "Control+a", "Control+s", "Control+u", "Control+1", "Control+Backspace",
        "Meta+c", "Meta+a", "Alt+s", "Alt+u", "Control+Minus", "Control+Equal", "Control+0",
    ):  # fmt: skip
        page.keyboard.press(combo)
    page.wait_for_timeout(700)  # any label, skip or undo would have been sent by now
    assert len(site.labels()) == before
    assert _origin(page) == shown and page.locator("#count").inner_text() == "0"
    x, y, z = (int(v) for v in shown.split(", "))
    task = site.query(
        lambda s: s.scalar(
            select(AnnotationTask).where(
                AnnotationTask.x == x, AnnotationTask.y == y, AnnotationTask.z == z
            )
        )
    )
    assert task.status == "leased", "not skipped, not labelled"
    # the browser keeps its own shortcuts: the page does not cancel Ctrl+-, Ctrl+C, ...
    prevented = page.evaluate(
        """() => ['-', '=', 'c', 's'].map((key) => {
            const e = new KeyboardEvent('keydown', {key, ctrlKey: true, cancelable: true, bubbles: true});
            document.body.dispatchEvent(e);
            return e.defaultPrevented; })"""
    )
    assert prevented == [False, False, False, False]
    assert errors == []


@pytest.mark.parametrize("size", [(1280, 800), (1920, 1080)])
def test_patch_fills_the_viewer_wheel_zooms_and_neighbours_show(
    site: Site, open_page: Any, size: tuple[int, int]
) -> None:
    from playwright.sync_api import expect

    page, errors = open_page(site, site.annotator, size, "/label")
    _ready(page)
    viewer = page.locator("#viewer").bounding_box()
    frame = page.locator("#frame").bounding_box()
    assert viewer and frame
    assert frame["height"] >= 0.6 * viewer["height"], (frame, viewer)
    assert viewer["height"] >= 0.7 * size[1] - 150, "the viewer takes the window's height"

    # wheel zoom around the pointer: the patch grows, the point under the pointer stays
    page.mouse.move(viewer["x"] + viewer["width"] / 2, viewer["y"] + viewer["height"] / 2)
    page.mouse.wheel(0, -400)
    page.wait_for_function(
        f"document.getElementById('frame').offsetHeight > {frame['height']:.0f} * 1.3"
    )
    page.mouse.wheel(0, 800)
    page.wait_for_function(
        f"document.getElementById('frame').offsetHeight < {frame['height']:.0f} * 0.9"
    )
    page.keyboard.press("0")
    page.wait_for_function(
        f"Math.abs(document.getElementById('frame').offsetHeight - {frame['height']:.0f}) < 2"
    )

    # neighbouring sections: the image becomes z+1's, then z-1's, the label stays for z
    own = page.locator("#patch").get_attribute("src")
    _, _, z = (int(v) for v in _origin(page).split(", "))
    page.keyboard.press(".")
    expect(page.locator("#view-state")).to_contain_text(f"showing section {z + 1}")
    expected = page.evaluate("imageUrl(imagePath(state.current, 1))")
    expect(page.locator("#patch")).to_have_attribute("src", expected)
    assert expected != own
    page.keyboard.press(",")
    page.keyboard.press(",")
    expect(page.locator("#view-state")).to_contain_text(f"showing section {z - 1}")
    expect(page.locator("#patch")).to_have_attribute(
        "src", page.evaluate("imageUrl(imagePath(state.current, -1))")
    )
    page.locator("#btn-znext").click()
    expect(page.locator("#view-state")).to_have_text(f"section {z}")
    expect(page.locator("#patch")).to_have_attribute("src", own or "")
    assert (
        page.locator("#scalebar b").inner_text().endswith("nm")
        or "µm" in page.locator("#scalebar b").inner_text()
    )
    assert errors == []


def test_webknossos_link_carries_the_patch_centre(site: Site, open_page: Any) -> None:
    page, errors = open_page(site, site.annotator, (1280, 800), "/label")
    x, y, z = (int(v) for v in _ready(page).split(", "))
    href = page.locator("#wk-link").get_attribute("href")
    assert href == f"{WK_SERVER}/datasets/{WK_DATASET}/view#{x + 70},{y + 70},{z},0,1.0"
    assert page.locator("#pos").inner_text() == f"{x + 70}, {y + 70}, {z}"
    assert "mag 1" in page.locator("#pos-unit").inner_text()
    assert errors == []


def test_a_verdict_changed_in_the_recent_strip_is_stored(site: Site, open_page: Any) -> None:
    from playwright.sync_api import expect

    page, errors = open_page(site, site.annotator, (1280, 800), "/label")
    first = _ready(page)
    page.keyboard.press("c")
    expect(page.locator("#count")).to_have_text("1")
    page.keyboard.press("c")
    expect(page.locator("#count")).to_have_text("2")
    strip = page.locator("#recent select")
    expect(strip).to_have_count(2)
    older = strip.nth(1)  # newest first: the second entry is the first patch
    assert older.input_value() == "clean|"
    older.select_option("artifact|fold")
    expect(page.locator("#message")).to_contain_text("is now artifact: fold")

    x, y, z = (int(v) for v in first.split(", "))
    mine = [lab for lab in site.labels() if (lab.x, lab.y, lab.z) == (x, y, z)]
    assert [(lab.label, lab.artifact_type, lab.annotator) for lab in mine] == [
        ("artifact", "fold", "bob")
    ], "the new verdict replaces the old one"
    assert mine[0].task_id is not None and mine[0].source == "ui"
    # undo now takes back the changed label of the last patch, not the first
    page.keyboard.press("u")
    expect(page.locator("#count")).to_have_text("1")
    assert [lab.label for lab in site.labels() if (lab.x, lab.y, lab.z) == (x, y, z)] == [
        "artifact"
    ]
    assert errors == []


def test_skip_returns_the_task_to_another_annotator(site: Site, open_page: Any) -> None:
    from playwright.sync_api import expect

    bob, errors = open_page(site, site.annotator, (1280, 800), "/label")
    skipped = _ready(bob)
    bob.keyboard.press("s")
    expect(bob.locator("#pos")).not_to_have_attribute("data-origin", skipped)
    x, y, z = (int(v) for v in skipped.split(", "))

    def task_and_skips(session: Any) -> tuple[AnnotationTask, list[TaskSkip]]:
        task = session.scalar(
            select(AnnotationTask).where(
                AnnotationTask.x == x, AnnotationTask.y == y, AnnotationTask.z == z
            )
        )
        return task, list(session.scalars(select(TaskSkip).where(TaskSkip.task_id == task.id)))

    task, skips = site.query(task_and_skips)
    assert task.status == "open" and task.lease_holder_id is None
    assert len(skips) == 1 and not skips[0].unsure

    # bob is not offered it again ...
    for _ in range(3):
        assert _origin(bob) != skipped
        shown = _origin(bob)
        bob.keyboard.press("s")
        expect(bob.locator("#pos")).not_to_have_attribute("data-origin", shown)
    # ... carol is: she works through the queue in rank order and reaches it
    carol, carol_errors = open_page(site, site.other, (1280, 800), "/label")
    _ready(carol)
    for _ in range(12):
        if _origin(carol) == skipped:
            break
        shown = _origin(carol)
        carol.keyboard.press("s")
        expect(carol.locator("#pos")).not_to_have_attribute("data-origin", shown)
    assert _origin(carol) == skipped
    carol.keyboard.press("a")
    expect(carol.locator("#count")).to_have_text("1")
    labels = [lab for lab in site.labels() if (lab.x, lab.y, lab.z) == (x, y, z)]
    assert [(lab.annotator, lab.label) for lab in labels] == [("carol", "artifact")]
    assert errors == [] and carol_errors == []


def test_unsure_goes_to_the_review_list_and_undo_brings_a_skip_back(
    site: Site, open_page: Any
) -> None:
    from playwright.sync_api import expect

    page, errors = open_page(site, site.annotator, (1280, 800), "/label")
    flagged = _ready(page)
    page.keyboard.press("f")
    expect(page.locator("#pos")).not_to_have_attribute("data-origin", flagged)
    page.keyboard.press("u")
    expect(page.locator("#pos")).to_have_attribute("data-origin", flagged)
    page.keyboard.press("f")
    expect(page.locator("#pos")).not_to_have_attribute("data-origin", flagged)
    review = page.evaluate(f"api('/datasets/{site.dataset_id}/tasks/review')")
    # the site is shared: other tests' flagged patches may be listed too
    (mine,) = [t for t in review["items"] if f"{t['x']}, {t['y']}, {t['z']}" == flagged]
    assert mine["unsure_flags"] == 1, "the undone flag is gone, the second one counts"
    assert errors == []


def test_sign_in_states_never_show_the_workspace(site: Site, open_page: Any) -> None:
    from playwright.sync_api import expect

    page, errors = open_page(site, None, (1280, 800), "/label")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#workspace")).to_be_hidden()
    page.locator("#token").fill(site.annotator)
    page.locator("#signin-form button").click()
    _ready(page)
    expect(page.locator("#signin")).to_be_hidden()
    page.locator("#signout").click()
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#workspace")).to_be_hidden()
    # a token the server refuses (revoked, mistyped): back to sign-in with the reason
    page.evaluate("localStorage.setItem('al_token', 'al_revoked')")
    page.reload()
    expect(page.locator("#signin-status")).to_contain_text("refused your token")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#workspace")).to_be_hidden()
    assert all("401" in e for e in errors), errors  # the browser logs the refused request


def test_a_label_retried_after_a_lost_answer_is_stored_once(site: Site, open_page: Any) -> None:
    """The server stored the label but its answer was lost (a 503 on the way back): the
    key pressed again repeats the request with the same idempotency key."""
    from playwright.sync_api import Route, expect

    page, _ = open_page(site, site.annotator, (1280, 800), "/label")
    shown = _ready(page)
    before = len(site.labels())
    answers: list[int] = []

    def lose_first_answer(route: Route) -> None:
        stored = route.fetch()  # the request reaches the server and is stored
        if not answers:
            answers.append(503)
            route.fulfill(status=503, json={"detail": "the job queue (broker) is unreachable"})
        else:
            answers.append(stored.status)
            route.fulfill(response=stored)

    page.route("**/api/v1/tasks/*/label", lose_first_answer)
    page.keyboard.press("a")
    expect(page.locator("#message")).to_contain_text("unreachable")
    assert _origin(page) == shown and len(site.labels()) == before + 1
    page.keyboard.press("a")
    expect(page.locator("#count")).to_have_text("1")
    assert answers == [503, 200]
    labels = site.labels()[before:]
    assert [(lab.label, f"{lab.x}, {lab.y}, {lab.z}") for lab in labels] == [("artifact", shown)]


def test_prelabels_are_off_by_default_and_p_accepts_one_never_on_an_audit_patch(
    site: Site, open_page: Any
) -> None:
    from playwright.sync_api import expect

    from server.auth import create_token

    first = site.query(
        lambda s: s.scalar(select(AnnotationTask).order_by(AnnotationTask.id).limit(1))
    )

    def first_task_and_token(session: Any) -> tuple[int, str]:
        # an audit patch first in the queue, carrying a score that must not reach anyone
        # (written in a transaction that reads nothing first: SQLite's lock upgrade would fail)
        audit = AnnotationTask(
            dataset_id=first.dataset_id, kind="audit", x=first.x, y=first.y, z=first.z + 1,
            w=first.w, h=first.h, rank=-100, reason="audit", status="open", labels_wanted=2,
            p_artifact=0.97,
        )  # fmt: skip
        session.add(audit)
        session.flush()
        return audit.id, create_token(session, name="erin", role="annotator")[1]

    audit_id, erin = site.query(first_task_and_token)
    api = httpx.Client(base_url=f"{site.base}/api/v1", headers={"Authorization": f"Bearer {erin}"})
    # what the API hands an annotator: the audit patch without any view of the model
    handed = api.post(f"/datasets/{site.dataset_id}/tasks/next").json()["task"]
    assert handed["id"] == audit_id and handed["kind"] == "proposal"
    model_view = ("prelabel", "p_artifact", "uncertainty", "recon_error", "score", "rank")
    assert all(handed[key] is None for key in model_view), handed
    assert api.post(f"/tasks/{audit_id}/release").status_code == 200
    page, errors = open_page(site, erin, (1280, 800), "/label")
    try:
        shown = _ready(page)
        assert shown.endswith(str(site.query(lambda s: s.get(AnnotationTask, audit_id)).z))
        expect(page.locator("#prelabels")).not_to_be_checked()
        expect(page.locator("#prelabel")).to_be_hidden()
        page.keyboard.press("p")  # off: nothing is accepted
        expect(page.locator("#message")).to_contain_text("Pre-labels are off")
        assert not [lab for lab in site.labels() if lab.annotator == "erin"]

        page.locator("#prelabels").check()
        expect(page.locator("#prelabel-text")).to_have_text("no pre-label for this patch")
        expect(page.locator("#btn-accept")).to_be_disabled()
        page.keyboard.press("c")  # the focus is on the switch: the keys still work
        expect(page.locator("#count")).to_have_text("1")

        # a proposal: its verdict at the threshold (0.5: its version recorded none)
        x, y, z = (int(v) for v in _origin(page).split(", "))
        task = site.query(
            lambda s: s.scalar(
                select(AnnotationTask).where(
                    AnnotationTask.x == x, AnnotationTask.y == y, AnnotationTask.z == z
                )
            )
        )
        verdict = "artifact" if task.p_artifact >= 0.5 else "clean"
        expect(page.locator("#prelabel-text")).to_have_text(
            f"{verdict} (p(artifact) {task.p_artifact:.2f}, threshold 0.50)"
        )
        page.keyboard.press("p")
        expect(page.locator("#count")).to_have_text("2")
        first, second = [lab for lab in site.labels() if lab.annotator == "erin"]
        assert (first.task_id, first.label, first.from_prelabel) == (audit_id, "clean", False)
        assert (second.task_id, second.label, second.from_prelabel) == (task.id, verdict, True)
        assert second.source == "ui"

        # the switch is remembered
        page.reload()
        _ready(page)
        expect(page.locator("#prelabels")).to_be_checked()
        expect(page.locator("#prelabel")).to_be_visible()
        assert errors == []
    finally:  # the audit patch waits for a second annotator: out of the other tests' way
        api.close()

        def retire(session: Any) -> None:
            retired = update(AnnotationTask).where(AnnotationTask.id == audit_id)
            session.execute(retired.values(status="retired"))

        site.query(retire)
