"""The sync where a lab would otherwise lose something without a word: stray skeleton clicks,
deletes and pushes the server refuses, the server's creation warnings, annotation URLs of every
form. Answers are recorded exchanges (tests/fixtures/webknossos_recorded.json) or, where none
was recorded, built from the server's source (cited at each)."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from server.db.base import session_scope
from server.db.tables import AnnotationTask, Dataset, Label, WkTask
from server.errors import InvalidInput
from server.webknossos import sync as wk_sync
from server.webknossos.strays import remove_stray_clicks
from server.wklib import wk
from tests.server import test_webknossos_replay
from tests.server.test_webknossos_replay import (
    RECORDED,
    TOKEN,
    _recorded,
    _settings,
    replay,
)
from tests.wkserver import serve

linked = test_webknossos_replay.linked  # the fixture: a dataset linked to l4_sample
ID = "69270ba2010000ca00110a9a"
PUSHED = "69270b360100009c00110a76"  # test_task/test_get_task.yml: one pending instance
# app/controllers/TaskController.scala (scalableminds/webknossos, e.g. as stored at 106a953e
# and in every later version): delete checks isTeamManagerOrAdminOf(...) ?~> "notAllowed", a
# Fox failure without an explicit status, which the server answers 400 with the message of
# conf/messages (as stored at 00c5c4cf): notAllowed
NOT_ALLOWED = "You are not authorized to view or edit this resource"
# The same check in the same controller's update (and in ProjectController, UserController)
# carries a status: ?~> "notAllowed" ~> FORBIDDEN, answered 403 with the same JSON; delete
# does not in the versions we read (106a953e and later, up to the ObjectId-typed delete), so
# 403 is what a server whose delete check gets that status would answer.
# A 5xx at cleanup comes from what stands in front of the server or from its crash, often not
# JSON: a plain-text answer, or nginx's own error page (ngx_http_special_response.c, the
# page of 503 "Service Temporarily Unavailable").
NGINX_503 = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
# app/models/task/TaskCreationService.scala (as stored at cceb43b2) warnIfTeamHasNoAccess:
# one warning per project team that cannot read the dataset, returned beside the tasks
NO_READ = "Project team “team_X1” has no read permission to dataset “l4_sample”."


# the first push of a task, as recorded (test_task/test_get_task.yml and around)
FIRST_PUSH = (
    ("test_get_task.yml", "GET", "/api/teams"),
    ("test_get_task.yml", "GET", "/api/taskTypes"),
    ("test_get_task.yml", "POST", "/api/taskTypes"),
    ("test_get_task.yml", "GET", "/api/projects/byName/{name}"),
    ("test_get_task.yml", "GET", "/api/user"),
    ("test_get_task.yml", "POST", "/api/projects"),
)
PULL = (
    ("test_get_project.yml", "GET", "/api/projects/byName/{name}"),
    ("test_project_get_tasks.yml", "GET", "/api/projects/{id}/tasks"),
)


@pytest.mark.parametrize(
    "ref",
    [
        ID,
        f"https://webknossos.org/annotations/{ID}",
        f"https://webknossos.org/annotations/Task/{ID}",
        f"https://webknossos.org/annotations/Explorational/{ID}#2816,4352,1792,0,1.3",
        f"http://wk.lab.example:9000/annotations/Task/{ID}/readOnly?token=abc",
        f"/annotations/{ID}",
        f"annotations/Explorational/{ID}",
        f"  https://webknossos.org/annotations/{ID}/  ",
    ],
)
def test_annotation_urls_of_every_form_give_the_id(ref: str) -> None:
    """The server's page routes: /annotations/:id and /annotations/:type/:id[/readOnly]
    (frontend/javascripts/router/router.tsx of scalableminds/webknossos)."""
    assert wk_sync._annotation_ref(ref) == ID


@pytest.mark.parametrize(
    "ref",
    [
        "https://webknossos.org/annotations/Task/",
        "https://webknossos.org/annotations/",
        f"https://webknossos.org/annotations/CompoundProject/{ID}",
        "not an id!",
    ],
)
def test_what_names_no_single_annotation_is_refused(ref: str) -> None:
    with pytest.raises(InvalidInput):
        wk_sync._annotation_ref(ref)


def _recorded_download() -> bytes:
    exchanges = json.loads(RECORDED.read_text())["exchanges"]
    found = next(e for e in exchanges if e["path"].startswith(f"/api/v12/annotations/{ID}/down"))
    return str(found["body"]).encode()


def test_the_recorded_stray_click_is_taken_out_and_named() -> None:
    """The recorded NmlWriter download holds a one-node tree "a tree": a click, no verdict."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.nml"
        path.write_bytes(_recorded_download())
        annotation = wk.Annotation.load(path)
    boxes = len(annotation.user_bounding_boxes)
    assert remove_stray_clicks(annotation) == ["tree 'a tree' at (0, 0, 0)"]
    assert not list(annotation.skeleton.flattened_trees())
    assert len(annotation.user_bounding_boxes) == boxes  # the boxes are what counts


def _task_nml(dataset: str, voxel: tuple[float, float, float]) -> bytes:
    annotation = wk.Annotation(name="task", dataset_name=dataset, voxel_size=voxel)
    annotation.user_bounding_boxes.append(
        wk.BoundingBox((140, 140, 0), (140, 140, 1)).with_name("artifact:debris")
    )
    annotation.skeleton.add_tree("Tree001").add_node(position=(300, 40, 1))  # a stray click
    annotation.skeleton.add_tree("fold").add_node(position=(200, 200, 1))  # a deliberate mark
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "task.nml"
        annotation.save(path)
        return path.read_bytes()


def test_a_finished_task_imports_its_box_and_reports_the_stray_click(
    linked: tuple[Any, Dataset], tmp_path: Path
) -> None:
    sessions, dataset = linked
    with serve(TOKEN) as fake:
        fake.add_dataset("59e9cfbdba632ac2ab8b23b5", Path(dataset.path), name=dataset.name)
        settings = _settings(tmp_path, fake.url)
        wk_sync.sync(sessions, settings, dataset, {})  # pushes the task
        [task] = fake.tasks()
        fake.finish(
            task["id"],
            filename="task.nml",
            data=_task_nml(dataset.name, tuple(dataset.voxel_size)),  # type: ignore[arg-type]
        )
        report = wk_sync.sync(sessions, settings, dataset, {})
    assert report.annotations_imported == 1 and report.errors == []
    [stray] = report.strays
    assert "'Tree001' at (300, 40, 1)" in stray and "1 stray skeleton click" in stray
    with session_scope(sessions) as session:
        labels = session.scalars(select(Label)).all()
    kinds = sorted((lab.label, lab.artifact_type, lab.z) for lab in labels)
    assert ("artifact", "debris", 0) in kinds and ("artifact", "fold", 1) in kinds
    assert all(not (lab.z == 1 and lab.x <= 300 < lab.x + 140 and lab.y <= 40) for lab in labels)


def _pushed_and_labelled(sessions: Any, dataset: Dataset) -> None:
    with session_scope(sessions) as session:
        task = session.scalars(select(AnnotationTask)).one()
        task.status = "labelled"
        session.add(WkTask(dataset_id=dataset.id, task_id=task.id, wk_task_id=PUSHED))


@pytest.mark.parametrize(
    ("status", "body", "content_type", "reason"),
    [
        (400, {"messages": [{"error": NOT_ALLOWED}]}, "application/json", NOT_ALLOWED),
        (403, {"messages": [{"error": NOT_ALLOWED}]}, "application/json", NOT_ALLOWED),
        (500, "Internal Server Error", "text/plain", "Internal Server Error"),
        (503, NGINX_503, "text/html", "503 Service Temporarily Unavailable"),
    ],
    ids=["400-notAllowed", "403-notAllowed", "500-plain-text", "503-proxy-page"],
)
def test_a_refused_delete_keeps_the_task_as_pushed_with_the_server_reason(
    linked: tuple[Any, Dataset],
    tmp_path: Path,
    status: int,
    body: Any,
    content_type: str,
    reason: str,
) -> None:
    sessions, dataset = linked
    _pushed_and_labelled(sessions, dataset)
    answers = _recorded(("test_get_task.yml", "GET", "/api/tasks/{id}"))
    answers[("DELETE", "/api/tasks/{id}")] = [
        {"status": status, "body": body, "headers": {"Content-Type": content_type}}
    ]
    with replay(answers) as server:
        report = wk_sync.SyncReport()
        with wk_sync.server(_settings(tmp_path, server.url)):
            wk_sync.cancel_labelled_elsewhere(sessions, dataset, report=report)
        assert server.requests.count("DELETE /api/tasks/{id}") == 1
    assert report.cancelled == 0
    [refused] = report.delete_refused
    assert PUSHED in refused and f"answered {status}: {reason}" in refused
    assert "<" not in refused  # the server's words, not its markup
    with session_scope(sessions) as session:
        assert session.scalars(select(WkTask.state)).all() == ["open"]
    assert report.to_dict()["delete_refused"] == report.delete_refused


def test_creation_warnings_reach_the_sync_report(
    linked: tuple[Any, Dataset], tmp_path: Path
) -> None:
    sessions, dataset = linked
    answers = _recorded(
        *FIRST_PUSH,
        ("test_get_task.yml", "POST", "/api/tasks"),
        ("test_get_all_managed_users.yml", "GET", "/api/users"),
        *PULL,
    )
    created = copy.deepcopy(answers[("POST", "/api/tasks")][0])
    created["body"]["warnings"] = [NO_READ]
    answers[("POST", "/api/tasks")] = [created]
    with replay(answers) as server:
        report = wk_sync.sync(sessions, _settings(tmp_path, server.url), dataset, {})
    assert report.pushed == 1
    assert any(NO_READ in w and "(140, 140, 0)" in w for w in report.warnings)


def test_a_refused_push_still_pulls_and_cleans_up(
    linked: tuple[Any, Dataset], tmp_path: Path
) -> None:
    """POST /tasks refused as a whole (app/controllers/TaskController.scala as stored at
    106a953e, createTasks: the dataset looked up by name ``?~> dataSet.notFound``, answered
    400 with conf/messages' dataSet.notFound); the pull and the cleanup run all the same."""
    sessions, dataset = linked
    _pushed_and_labelled(sessions, dataset)
    with session_scope(sessions) as session:
        session.add(AnnotationTask(dataset_id=dataset.id, x=0, y=0, z=1, w=140, h=140))
    answers = _recorded(
        *FIRST_PUSH,
        *PULL,
        ("test_get_task.yml", "GET", "/api/tasks/{id}"),
        ("test_delete_task.yml", "DELETE", "/api/tasks/{id}"),
    )
    missing = "Dataset 59e9cfbdba632ac2ab8b23b5 does not exist or could not be accessed"
    answers[("POST", "/api/tasks")] = [
        {"status": 400, "body": {"messages": [{"error": missing}]}, "headers": {}}
    ]
    with replay(answers) as server:
        report = wk_sync.sync(sessions, _settings(tmp_path, server.url), dataset, {})
    assert report.pushed == 0
    [refused] = report.refused
    assert missing in refused and "answered 400" in refused
    assert "GET /api/projects/{id}/tasks" in server.requests  # pulled
    assert "DELETE /api/tasks/{id}" in server.requests and report.cancelled == 1  # cleaned up
