"""The sync against answers real webKnossos servers gave: each request of the project is
answered with the recorded exchange for its route (``tests/fixtures/webknossos_recorded.json``,
taken from the webknossos-libs recordings), and the project must handle every one of them,
the error answers included (a project that does not exist yet, a task already gone)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from sqlalchemy import select

from server.datasets.service import register_dataset
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope
from server.db.tables import AnnotationTask, Dataset, WkTask
from server.labels.files import parse_label_file
from server.settings import Settings
from server.sim.synth import make_synthetic_dataset
from server.webknossos import sync as wk_sync

RECORDED = Path(__file__).parents[1] / "fixtures" / "webknossos_recorded.json"
TOKEN = "recorded-token"
# The library asks first; the shape of test_api_client/test_build_info.yml. The recorded
# servers spoke version 12, which the installed library refuses (it speaks 13 to 16): 13 is
# the closest, and its routes for these calls are the recorded ones.
BUILD_INFO = {
    "webknossos": {"name": "webknossos", "version": "recorded"},
    "httpApiVersioning": {"currentApiVersion": 13, "oldestSupportedApiVersion": 5},
    "localDataStoreEnabled": True,
    "localTracingStoreEnabled": True,
}


def _route(path: str) -> str:
    """A recorded or requested path without the API version and the query: ``GET /tasks/<id>``
    is ``/tasks/*``-like only by its fixed words, so ids are replaced by ``{id}``."""
    route = re.sub(r"^/(api|data)/v\d+", r"/\1", urlparse(path).path)
    route = re.sub(r"/[0-9a-f]{24}(?=/|$)", "/{id}", route)
    return re.sub(r"/projects/byName/[^/]+", "/projects/byName/{name}", route)


@dataclass
class Replay:
    """Answers ``(method, route)`` with the recorded exchanges picked for it, in order; the
    last one repeats."""

    answers: dict[tuple[str, str], list[dict[str, Any]]]
    requests: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    url: str = ""

    def answer(self, method: str, path: str) -> dict[str, Any]:
        key = (method, _route(path))
        self.requests.append(f"{method} {key[1]}")
        self.paths.append(urlparse(path).path)
        queue = self.answers.get(key)
        if not queue:
            raise AssertionError(f"no recorded answer for {method} {path}")
        return queue.pop(0) if len(queue) > 1 else queue[0]


def _recorded(*picks: tuple[str, str, str]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The exchanges of the given cassettes (file name), methods and routes, in that order."""
    exchanges = json.loads(RECORDED.read_text())["exchanges"]
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cassette, method, route in picks:
        found = [
            e
            for e in exchanges
            if e["cassette"].endswith(cassette)
            and e["method"] == method
            and _route(e["path"]) == route
        ]
        assert found, f"{cassette}: no recorded {method} {route}"
        out.setdefault((method, route), []).append(found[0])
    return out


@contextmanager
def replay(answers: dict[tuple[str, str], list[dict[str, Any]]]) -> Iterator[Replay]:
    state = Replay(answers=answers)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if urlparse(self.path).path == "/api/buildinfo":
                status, body, headers = 200, BUILD_INFO, {}
            else:
                exchange = state.answer(self.command, self.path)
                status, body, headers = exchange["status"], exchange["body"], exchange["headers"]
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            # JSON as the server answers, unless the exchange names its own (a proxy's page)
            self.send_header("Content-Type", headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                if key != "Content-Type":
                    self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = _serve

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def linked(tmp_path: Path) -> Iterator[tuple[Any, Dataset]]:
    """A SQLite database with one dataset linked to the recorded server's ``l4_sample``."""
    make_synthetic_dataset(tmp_path / "ds", seed=2, shape=(420, 2))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate.upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    with session_scope(sessions) as session:
        dataset = register_dataset(session, name="mSEM run 3.v2", path=str(tmp_path / "ds"))
        dataset.settings = {
            "webknossos": {"dataset_id": "59e9cfbdba632ac2ab8b23b5", "push": True, "instances": 1}
        }
        session.flush()
        session.add(AnnotationTask(dataset_id=dataset.id, x=140, y=140, z=0, w=140, h=140))
        session.flush()
        session.expunge(dataset)
    yield sessions, dataset


def _settings(tmp_path: Path, url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", wk_url=url, wk_token=TOKEN)


def test_first_push_creates_the_project_the_server_says_it_lacks(
    linked: tuple[Any, Dataset], tmp_path: Path
) -> None:
    """The recorded 404 for an unknown project ("Project could not be found") is what the
    server says before the first push: the project is then created and the task pushed."""
    sessions, dataset = linked
    answers = _recorded(
        ("test_get_task.yml", "GET", "/api/teams"),
        ("test_get_task.yml", "GET", "/api/taskTypes"),
        ("test_get_task.yml", "POST", "/api/taskTypes"),
        ("test_get_task.yml", "GET", "/api/projects/byName/{name}"),
        ("test_get_task.yml", "GET", "/api/user"),
        ("test_get_task.yml", "POST", "/api/projects"),
        ("test_get_task.yml", "POST", "/api/tasks"),
        ("test_get_all_managed_users.yml", "GET", "/api/users"),
        ("test_get_project.yml", "GET", "/api/projects/byName/{name}"),  # the pull finds it
        ("test_project_get_tasks.yml", "GET", "/api/projects/{id}/tasks"),
    )
    with replay(answers) as server:
        # the whole sync: push, then pull (the project's tasks) and cleanup
        report = wk_sync.sync(sessions, _settings(tmp_path, server.url), dataset, {})
    assert "GET /api/projects/byName/{name}" in server.requests
    assert "POST /api/projects" in server.requests
    # the server allows only [A-Za-z0-9_-] in project names; the dataset's name has more
    asked = {p.rsplit("/", 1)[1] for p in server.paths if "/projects/byName/" in p}
    assert asked == {"artifact-loop-mSEM_run_3_v2"}
    assert report.pushed == 1 and report.refused == []
    with session_scope(sessions) as session:
        pushed = session.scalars(select(WkTask)).all()
        assert [t.wk_task_id for t in pushed] == ["69270b360100009c00110a76"]
    # the recorded users hold other experiences only: nobody can be given the task
    assert report.unassignable == 1
    assert "artifact-loop" in report.warnings[0] and "Change Experience" in report.warnings[0]


def test_pull_before_any_push_finds_no_project(linked: tuple[Any, Dataset], tmp_path: Path) -> None:
    sessions, dataset = linked
    answers = _recorded(("test_get_task.yml", "GET", "/api/projects/byName/{name}"))
    with replay(answers) as server:
        report = wk_sync.SyncReport()
        settings = _settings(tmp_path, server.url)
        with wk_sync.server(settings):
            wk_sync.pull_annotations(sessions, settings, dataset, ids=[], report=report)
    assert report.annotations_seen == 0 and report.errors == []


def test_pull_lists_the_project_tasks_and_reads_a_recorded_annotation(
    linked: tuple[Any, Dataset], tmp_path: Path
) -> None:
    """The project is found and its task list read (nothing finished in the recording); an
    annotation given by id is downloaded as the server sent it and read back."""
    _sessions, dataset = linked
    answers = _recorded(
        ("test_get_project.yml", "GET", "/api/projects/byName/{name}"),
        ("test_project_get_tasks.yml", "GET", "/api/projects/{id}/tasks"),
        ("test_bounding_box_roundtrip.yml", "GET", "/api/annotations/{id}/download"),
    )
    with replay(answers) as server:
        settings = _settings(tmp_path, server.url)
        with wk_sync.server(settings):
            assert wk_sync._finished_annotations(settings, dataset) == []
            [explicit] = wk_sync._explicit_annotations(["69270ba2010000ca00110a9a"])
            downloaded = wk_sync._download("69270ba2010000ca00110a9a")
    assert explicit.problem is None and explicit.modified > 0
    assert not isinstance(downloaded, str)
    filename, data = downloaded
    # the recorded annotation has a volume layer (its data skipped): a zip holding the NML,
    # which the label importer reads: the recording's dataset name and voxel size
    assert filename.endswith(".zip")
    parsed = parse_label_file(filename=filename, data=data)
    assert parsed.format == "zip" and parsed.dataset_name == "l4_sample"
    assert parsed.voxel_size == pytest.approx((11.24, 11.24, 28.0))


def test_cleanup_deletes_an_untouched_task_and_accepts_one_already_gone(
    linked: tuple[Any, Dataset], tmp_path: Path
) -> None:
    """Recorded: a task with one pending instance and nobody on it (deleted: "Task was
    removed"), then a task the server no longer has ("Task could not be found")."""
    sessions, dataset = linked
    with session_scope(sessions) as session:
        task = session.scalars(select(AnnotationTask)).one()
        task.status = "labelled"
        session.add(
            WkTask(dataset_id=dataset.id, task_id=task.id, wk_task_id="69270b360100009c00110a76")
        )
        session.add(
            WkTask(dataset_id=dataset.id, task_id=task.id, wk_task_id="69270b390100009c00110a87")
        )
    answers = _recorded(
        ("test_get_task.yml", "GET", "/api/tasks/{id}"),
        ("test_delete_task.yml", "DELETE", "/api/tasks/{id}"),
        ("test_delete_task.yml", "GET", "/api/tasks/{id}"),
    )
    with replay(answers) as server:
        report = wk_sync.SyncReport()
        with wk_sync.server(_settings(tmp_path, server.url)):
            wk_sync.cancel_labelled_elsewhere(sessions, dataset, report=report)
    assert server.requests.count("DELETE /api/tasks/{id}") == 1
    assert report.cancelled == 2 and report.kept_in_progress == 0


def test_the_admin_links_by_name_and_gets_the_server_id(tmp_path: Path) -> None:
    answers = _recorded(
        ("test_get_task.yml", "GET", "/api/user"),
        ("test_get_task.yml", "GET", "/api/datasets"),
    )
    with replay(answers) as server:
        found = wk_sync.find_dataset_id(_settings(tmp_path, server.url), name="l4_sample")
    assert found == "59e9cfbdba632ac2ab8b23b5"


def test_a_refusal_keeps_the_server_reason(tmp_path: Path) -> None:
    """Any other refusal reaches the job with the server's own words, not the library's
    boilerplate around them."""
    from webknossos.client.api_client.errors import UnexpectedStatusError

    answers = _recorded(("test_delete_task.yml", "GET", "/api/tasks/{id}"))
    with replay(answers) as server:
        settings = _settings(tmp_path, server.url)
        with pytest.raises(wk_sync.WebknossosError) as raised, wk_sync.server(settings):
            try:
                wk_sync.wk.Task.get_by_id("69270b390100009c00110a87")
            except UnexpectedStatusError:
                raise
    text = str(raised.value)
    assert "Task could not be found" in text and "answered 404" in text
    assert "double-check" not in text
