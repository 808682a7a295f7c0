"""A small local server speaking the part of the webKnossos REST API that the ``webknossos``
library calls for tasks and annotations (API v16 routes, camelCase JSON, ``X-Auth-Token``,
``X-Total-Count`` paging, ``Content-Disposition`` downloads).

Tests play the annotators: :meth:`FakeWebknossos.finish` stores an annotation file made by
the real library as a finished instance of a task.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

ORG = "lab"
USER = {
    "id": "u-admin",
    "email": "admin@lab.example",
    "organization": ORG,
    "firstName": "Ada",
    "lastName": "Admin",
    "created": 0,
    "lastActivity": 0,
    "isActive": True,
    "isAdmin": True,
    "isDatasetManager": True,
    "teams": [{"id": "t-1", "name": "connectomics", "isTeamManager": True}],
    "experiences": {},
}
TEAM = {"id": "t-1", "name": "connectomics", "organization": ORG}


@dataclass
class Annotation:
    id: str
    task_id: str
    owner: str
    filename: str
    data: bytes
    modified: int
    state: str = "Finished"


@dataclass
class State:
    token: str
    task_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    annotations: dict[str, Annotation] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.ids):06d}"


class FakeWebknossos:
    """Run with :func:`serve`; ``url`` is what ``webknossos_context`` gets."""

    def __init__(self, token: str) -> None:
        self.state = State(token=token)
        self.datasets: dict[str, Path] = {}
        self.lock = threading.Lock()
        self.url = ""

    # -- what annotators do --------------------------------------------------------------------
    def tasks(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(t) for t in self.state.tasks.values()]

    def finish(self, task_id: str, *, filename: str, data: bytes, owner: str = "u-anna") -> str:
        """An annotator finished an instance of ``task_id`` with this annotation file."""
        with self.lock:
            task = self.state.tasks[task_id]
            annotation = Annotation(
                id=self.state.new_id("a"),
                task_id=task_id,
                owner=owner,
                filename=filename,
                data=data,
                modified=int(time.time() * 1000),
            )
            self.state.annotations[annotation.id] = annotation
            status = task["status"]
            status["pending"] = max(0, status["pending"] - 1)
            status["finished"] += 1
            return annotation.id

    def touch(self, annotation_id: str) -> None:
        """The annotator opened the finished annotation again and saved it."""
        with self.lock:
            self.state.annotations[annotation_id].modified += 1000

    def add_annotation(self, *, filename: str, data: bytes, owner: str = "u-anna") -> str:
        """An explicit (non-task) annotation, e.g. an expert's file shared by URL."""
        with self.lock:
            annotation = Annotation(
                id=self.state.new_id("x"),
                task_id="",
                owner=owner,
                filename=filename,
                data=data,
                modified=int(time.time() * 1000),
            )
            self.state.annotations[annotation.id] = annotation
            return annotation.id

    def add_dataset(self, dataset_id: str, path: Path) -> None:
        """A local dataset folder served as the datastore's Zarr streaming of ``dataset_id``."""
        with self.lock:
            self.datasets[dataset_id] = path

    def _dataset_json(self, dataset_id: str) -> dict[str, Any]:
        return {
            "id": dataset_id,
            "name": dataset_id,
            "isPublic": False,
            "folderId": "f-1",
            "allowedTeams": [TEAM],
            "tags": [],
            "directoryName": dataset_id,
            "owningOrganization": ORG,
            "dataStore": {"url": self.url, "name": "localhost", "allowsUpload": True},
            # properties come from the Zarr streaming route, as for a dataset being converted
            "dataSource": {"id": {"name": dataset_id, "team": ORG}, "status": "streaming only"},
            "created": 0.0,
        }

    def _zarr_file(self, path: str, range_header: str | None) -> tuple[int, Any, dict[str, str]]:
        match = re.fullmatch(r"/data/v\d+/zarr/([^/]+)/(.*)", path)
        if match is None or match.group(1) not in self.datasets:
            return 404, {"messages": [{"error": "Dataset not found"}]}, {}
        root = self.datasets[match.group(1)].resolve()
        file = (root / unquote(match.group(2))).resolve()
        if root not in file.parents or not file.is_file():
            return 404, {"messages": [{"error": "not found"}]}, {}
        data = file.read_bytes()
        if range_header and range_header.startswith("bytes="):
            start_text, _, end_text = range_header[6:].partition("-")
            if start_text == "":  # suffix range: the last n bytes
                start, end = max(0, len(data) - int(end_text)), len(data) - 1
            else:
                start = int(start_text)
                end = int(end_text) if end_text else len(data) - 1
            end = min(end, len(data) - 1)
            return (
                206,
                data[start : end + 1],
                {
                    "Content-Range": f"bytes {start}-{end}/{len(data)}",
                    "Accept-Ranges": "bytes",
                },
            )
        return 200, data, {"Accept-Ranges": "bytes"}

    # -- the API -------------------------------------------------------------------------------
    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: Any,
        token: str | None,
        range_header: str | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        if path == "/api/buildinfo":
            return (
                200,
                {
                    "webknossos": {"name": "webknossos", "version": "test"},
                    "httpApiVersioning": {"currentApiVersion": 16, "oldestSupportedApiVersion": 5},
                    "localDataStoreEnabled": True,
                    "localTracingStoreEnabled": True,
                },
                {},
            )
        if path.startswith("/data/"):
            if token != self.state.token:
                return 401, {"messages": [{"error": "Unauthorized"}]}, {}
            return self._zarr_file(path, range_header)
        match = re.fullmatch(r"/api(?:/v\d+)?(/.*)", path)
        if match is None:
            return 404, {"messages": [{"error": f"no route {path}"}]}, {}
        route = match.group(1)
        if token != self.state.token:
            return 401, {"messages": [{"error": "Unauthorized"}]}, {}
        with self.lock:
            self.state.requests.append(f"{method} {route}")
            return self._route(method, route, query, body)

    def _route(
        self, method: str, route: str, query: dict[str, str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        s = self.state
        if method == "GET" and route == "/user":
            return 200, USER, {}
        if m := re.fullmatch(r"/datasets/([^/]+)", route):
            if m.group(1) not in self.datasets:
                return 404, {"messages": [{"error": "Dataset not found"}]}, {}
            return 200, self._dataset_json(m.group(1)), {}
        if method == "GET" and route == "/teams":
            return 200, [TEAM], {}
        if route == "/taskTypes":
            if method == "GET":
                return 200, list(s.task_types.values()), {}
            task_type = {
                "id": s.new_id("tt"),
                "summary": body["summary"],
                "description": body["description"],
                "teamId": body["teamId"],
                "teamName": body["teamName"],
                "settings": body.get("settings"),
                "tracingType": body["tracingType"],
            }
            s.task_types[task_type["id"]] = task_type
            return 200, task_type, {}
        if method == "POST" and route == "/projects":
            if any(p["name"] == body["name"] for p in s.projects.values()):
                return 400, {"messages": [{"error": "project name taken"}]}, {}
            project = {
                "id": s.new_id("p"),
                "name": body["name"],
                "team": body["team"],
                "teamName": TEAM["name"],
                "priority": body["priority"],
                "paused": body["paused"],
                "owner": {"id": USER["id"], "firstName": "Ada", "lastName": "Admin"},
                "isBlacklistedFromReport": body["isBlacklistedFromReport"],
                "expectedTime": body.get("expectedTime"),
            }
            s.projects[project["id"]] = project
            return 200, project, {}
        if m := re.fullmatch(r"/projects/byName/(.+)", route):
            name = unquote(m.group(1))
            found = next((p for p in s.projects.values() if p["name"] == name), None)
            if found is None:
                return 404, {"messages": [{"error": "Project not found"}]}, {}
            return 200, found, {}
        if m := re.fullmatch(r"/projects/([^/]+)/tasks", route):
            tasks = [t for t in s.tasks.values() if t["projectId"] == m.group(1)]
            limit = int(query.get("limit", 1000))
            page = int(query.get("pageNumber", 0))
            return 200, tasks[page * limit : (page + 1) * limit], {"X-Total-Count": str(len(tasks))}
        if m := re.fullmatch(r"/projects/([^/]+)", route):
            project = s.projects.get(m.group(1))
            return (200, project, {}) if project else (404, {"messages": []}, {})
        if method == "POST" and route == "/tasks":
            return 200, {"tasks": [self._create_task(p) for p in body], "warnings": []}, {}
        if m := re.fullmatch(r"/tasks/([^/]+)/annotations", route):
            return (
                200,
                [
                    self._annotation_json(a)
                    for a in s.annotations.values()
                    if a.task_id == m.group(1)
                ],
                {},
            )
        if m := re.fullmatch(r"/tasks/([^/]+)", route):
            task = s.tasks.get(m.group(1))
            if task is None:
                return 404, {"messages": [{"error": "Task not found"}]}, {}
            if method == "DELETE":
                del s.tasks[m.group(1)]
                return 200, {}, {}
            return 200, task, {}
        if m := re.fullmatch(r"/annotations/([^/]+)/info", route):
            annotation = s.annotations.get(m.group(1))
            if annotation is None:
                return 404, {"messages": [{"error": "Annotation not found"}]}, {}
            return 200, self._annotation_json(annotation), {}
        if m := re.fullmatch(r"/annotations/([^/]+)/download", route):
            annotation = s.annotations.get(m.group(1))
            if annotation is None:
                return 404, {"messages": [{"error": "Annotation not found"}]}, {}
            return (
                200,
                annotation.data,
                {"Content-Disposition": f'attachment; filename="{annotation.filename}"'},
            )
        return 404, {"messages": [{"error": f"no route {method} {route}"}]}, {}

    def _create_task(self, params: dict[str, Any]) -> dict[str, Any]:
        s = self.state
        project = next((p for p in s.projects.values() if p["name"] == params["projectName"]), None)
        task_type = s.task_types.get(params["taskTypeId"])
        if project is None or task_type is None:
            return {"error": "unknown project or task type"}
        task = {
            "id": s.new_id("t"),
            "projectId": project["id"],
            "datasetId": params["datasetId"],
            "status": {"pending": params["pendingInstances"], "active": 0, "finished": 0},
            "type": task_type,
            "neededExperience": params["neededExperience"],
            "boundingBox": params.get("boundingBox"),
            "editPosition": params["editPosition"],
            "editRotation": params["editRotation"],
            "script": None,
        }
        s.tasks[task["id"]] = task
        return {"success": task}

    def _annotation_json(self, a: Annotation) -> dict[str, Any]:
        return {
            "id": a.id,
            "typ": "Task" if a.task_id else "Explorational",
            "owner": {"id": a.owner, "firstName": "Anna", "lastName": "Notator"},
            "name": a.filename,
            "description": "",
            "state": a.state,
            "annotationLayers": [],
            "modified": a.modified,
            "tracingTime": 60000,
            "created": a.modified,
        }


def _handler(fake: FakeWebknossos) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self, method: str) -> None:
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, payload, headers = fake.handle(
                method,
                url.path,
                query,
                body,
                self.headers.get("X-Auth-Token") or query.get("token"),
                self.headers.get("Range"),
            )
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            ctype = "application/octet-stream" if isinstance(payload, bytes) else "application/json"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def serve(token: str = "wk-secret-token") -> Iterator[FakeWebknossos]:
    fake = FakeWebknossos(token)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True, name="fake-webknossos")
    thread.start()
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()
