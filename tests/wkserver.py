"""A small local server answering the part of the webKnossos REST API the ``webknossos``
library calls for this project, the way real servers answer it.

Every route, status, message and JSON shape served here follows exchanges recorded with real
webKnossos servers (``tests/fixtures/webknossos_recorded.json``, from the webknossos-libs
recordings; the cassette named in each comment below). Where nothing was recorded (a refused
task creation, an invalid project name, linked layers on upload) the answer follows the
library's client models and the server's message catalogue (``conf/messages`` of the
webknossos repository), named in the comment.

The recorded servers spoke API version 12, which the installed library no longer accepts
(it speaks 13 to 16); by default this one announces 13, the version whose routes are the
recorded ones (uploads through ``/data/v13/datasets/reserveUpload``, ``/data/datasets`` and
``/data/v13/datasets/finishUpload``). ``serve(api_version=16)`` announces 16, as a current
server does, and takes uploads by the current datastore's routes
(webknossos-datastore/conf/datastore.latest.routes of scalableminds/webknossos at 05522d43:
``POST /datasets/upload/dataset/reserveUpload``, ``POST /datasets/upload/:uploadDomain`` for
the chunks, ``POST /datasets/upload/:uploadDomain/finishUpload?uploadId=``); no exchange
with those routes was recorded, so their answers follow the datastore's UploadController
(cited at :meth:`FakeWebknossos._finish_dataset_upload`).

Its datastore keeps what is uploaded in a data folder of its own and, like a current
datastore at finishUpload, refuses a datasource whose paths leave the uploaded dataset
(UploadService.checkPathsInUploadedDatasourcePropertiesJson): what it serves afterwards comes
from that folder only.

Tests play the annotators and the admin: :meth:`FakeWebknossos.start` and
:meth:`FakeWebknossos.finish` work on a task instance, :meth:`FakeWebknossos.grant_experience`
is the admin's "Change Experience" on the Users screen, :meth:`FakeWebknossos.refuse_task`
makes the server refuse creating a task.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

API_VERSION = 13  # announced by default; serve(api_version=16) for a current server
ORG = "Organization_X"
TEAM = {  # test_task/test_get_task.yml GET /api/v12/teams
    "id": "570b9f4b2a7c0e3b008da6ec",
    "name": "team_X1",
    "organization": ORG,
    "isOrganizationTeam": True,
}
TEAM_MEMBERSHIP = {"id": TEAM["id"], "name": TEAM["name"], "isTeamManager": True}
ADMIN_ID = "570b9f4d2a7c0e4d008da6ef"
ANNOTATOR_ID = "670b9f4d2a7c0e4d008da6ef"
PROJECT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # the server's rule for project names
# messages as the recorded servers said them (cassette) or the server's catalogue says them
PROJECT_NOT_FOUND = "Project could not be found"  # test_task/*.yml, test_project_delete.yml
TASK_NOT_FOUND = "Task could not be found"  # test_task/test_delete_task.yml
TASK_REMOVED = "Task was removed"  # test_task/test_delete_task.yml
PROJECT_NAME_INVALID = "Name contains invalid characters"  # conf/messages project.name.invalidChars
PROJECT_NAME_TAKEN = "The project name “{0}” is already in use."  # project.name.alreadyTaken
DATASET_NOT_FOUND = "Dataset {0} does not exist or could not be accessed"  # dataSet.notFound
ANNOTATION_NOT_FOUND = "Annotation couldn\u2019t be found"  # conf/messages annotation.notFound
NOT_AUTHORISED = (
    "You are not authorized to view this resource. Please log in."  # user.notAuthorised
)
# DatasetService.assertValidDatasetName (app/models/dataset/DatasetService.scala) with the
# texts of util/src/main/scala/com/scalableminds/util/Msg.scala (as stored at f7787bc7)
DATASET_NAME_RULES = (
    (
        lambda n: re.fullmatch(r"[A-Za-z0-9_\-\.]*", n) is not None,
        "Dataset name is invalid. Please use only letters, digits, dots, underscores, hyphens.",
    ),
    (
        lambda n: not n.startswith("."),
        "Dataset name is invalid. Please use a name that does not start with a dot.",
    ),
    (lambda n: len(n) >= 3, "Dataset name is invalid. Please use at least three characters."),
)
# Msg.Dataset.Upload.noSuchUpload and .finishFailed (Msg.scala as stored at f7787bc7)
NO_SUCH_UPLOAD = "Could not find running upload with upload id \u201c{0}\u201d."
FINISH_FAILED = "Could not finalize upload for dataset \u201c{0}\u201d."
# Msg.Dataset.Upload.disallowedPaths, raised at finishUpload by UploadService
# .checkPathsInUploadedDatasourcePropertiesJson (webknossos-datastore)
DISALLOWED_PATHS = (
    "Cannot upload a datasource with local paths that leave the dataset, "
    "or with paths that match the WEBKNOSSOS reserved paths."
)


def _user(user_id: str, email: str, first: str, *, admin: bool) -> dict[str, Any]:
    """test_user/test_get_all_managed_users.yml GET /api/v12/users (one entry)."""
    return {
        "id": user_id,
        "email": email,
        "firstName": first,
        "lastName": "Lab",
        "isAdmin": admin,
        "isOrganizationOwner": admin,
        "isDatasetManager": admin,
        "isActive": True,
        "teams": [dict(TEAM_MEMBERSHIP, isTeamManager=admin)],
        "experiences": {},
        "lastActivity": 0,
        "isAnonymous": False,
        "isEditable": True,
        "organization": ORG,
        "novelUserExperienceInfos": {},
        "selectedTheme": "auto",
        "created": 0,
        "lastTaskTypeId": None,
        "isSuperUser": False,
        "isEmailVerified": True,
        "isGuest": False,
        "isUnlisted": False,
    }


def _compact(user: dict[str, Any]) -> dict[str, Any]:
    """A user as a project's owner or an annotation's owner: test_project_create.yml."""
    keys = ("id", "email", "firstName", "lastName", "isAdmin", "isDatasetManager", "isAnonymous")
    return {**{k: user[k] for k in keys}, "teams": user["teams"]}


def _messages(kind: str, text: str) -> dict[str, Any]:
    return {"messages": [{kind: text}]}


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
class ServerDataset:
    id: str
    name: str
    path: Path
    linked: dict[str, tuple[str, str]] = field(default_factory=dict)  # layer -> (dataset, layer)
    created: int = field(default_factory=lambda: int(time.time() * 1000))


@dataclass
class Upload:
    name: str
    layers_to_link: list[dict[str, Any]]
    folder: Path


@dataclass
class State:
    token: str
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    annotations: dict[str, Annotation] = field(default_factory=dict)
    datasets: dict[str, ServerDataset] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)
    refusals: list[tuple[int, str]] = field(default_factory=list)  # (creation number, reason)
    task_creations: int = 0
    requests: list[str] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def new_id(self) -> str:
        """An ObjectId as the server makes them: 24 hex digits, time first."""
        return f"{int(time.time()):08x}{0x0100009C:08x}{next(self.ids):08x}"


class FakeWebknossos:
    """Run with :func:`serve`; ``url`` is what ``webknossos_context`` gets."""

    def __init__(self, token: str, *, root: Path, api_version: int = API_VERSION) -> None:
        self.state = State(token=token)
        self.api_version = api_version
        self.state.users = {
            ADMIN_ID: _user(ADMIN_ID, "admin@lab.example", "Ada", admin=True),
            ANNOTATOR_ID: _user(ANNOTATOR_ID, "anna@lab.example", "Anna", admin=False),
        }
        self.root = root
        self.lock = threading.Lock()
        self.url = ""

    # -- what annotators and admins do ---------------------------------------------------------
    def tasks(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(json.dumps(t)) for t in self.state.tasks.values()]

    def annotations(self) -> list[Annotation]:
        with self.lock:
            return list(self.state.annotations.values())

    def start(self, task_id: str, *, owner: str = ANNOTATOR_ID) -> str:
        """An annotator got an instance of ``task_id`` and works on it (an Active annotation)."""
        with self.lock:
            task = self.state.tasks[task_id]
            annotation = Annotation(
                id=self.state.new_id(),
                task_id=task_id,
                owner=owner,
                filename="",
                data=b"",
                modified=int(time.time() * 1000),
                state="Active",
            )
            self.state.annotations[annotation.id] = annotation
            task["status"]["pending"] -= 1
            task["status"]["active"] += 1
            return annotation.id

    def finish(self, task_id: str, *, filename: str, data: bytes, owner: str = ANNOTATOR_ID) -> str:
        """An annotator finished an instance of ``task_id`` with this annotation file."""
        annotation_id = self.start(task_id, owner=owner)
        with self.lock:
            annotation = self.state.annotations[annotation_id]
            annotation.filename, annotation.data, annotation.state = filename, data, "Finished"
            status = self.state.tasks[task_id]["status"]
            status["active"] -= 1
            status["finished"] += 1
            return annotation_id

    def touch(self, annotation_id: str) -> None:
        """The annotator opened the finished annotation again and saved it."""
        with self.lock:
            self.state.annotations[annotation_id].modified += 1000

    def add_annotation(self, *, filename: str, data: bytes, owner: str = ANNOTATOR_ID) -> str:
        """An explicit (non-task) annotation, e.g. an expert's file shared by URL."""
        with self.lock:
            annotation = Annotation(
                id=self.state.new_id(),
                task_id="",
                owner=owner,
                filename=filename,
                data=data,
                modified=int(time.time() * 1000),
            )
            self.state.annotations[annotation.id] = annotation
            return annotation.id

    def grant_experience(self, user_id: str, domain: str, value: int = 0) -> None:
        """The admin's "Change Experience" for a user on the Users screen."""
        with self.lock:
            self.state.users[user_id]["experiences"][domain] = value

    def refuse_task(self, *, creation: int, reason: str) -> None:
        """The server refuses the ``creation``-th task it is asked to create, with ``reason``."""
        with self.lock:
            self.state.refusals.append((creation, reason))

    def add_dataset(self, dataset_id: str, path: Path, *, name: str | None = None) -> None:
        """A local dataset folder served as the server's dataset ``dataset_id``."""
        with self.lock:
            self.state.datasets[dataset_id] = ServerDataset(
                id=dataset_id, name=name or dataset_id, path=path
            )

    def dataset(self, dataset_id: str) -> ServerDataset:
        with self.lock:
            return self.state.datasets[dataset_id]

    # -- datasets ------------------------------------------------------------------------------
    def _properties(self, ds: ServerDataset) -> dict[str, Any]:
        """The dataset's datasource properties with its linked layers (whose mags the datastore
        reads from the dataset they come from)."""
        props = json.loads((ds.path / "datasource-properties.json").read_text())
        props["id"] = {"name": f"{ds.name}-{ds.id}", "team": ORG}
        layers = [lay for lay in props.get("dataLayers", []) if lay["name"] not in ds.linked]
        for name, (source_id, source_layer) in ds.linked.items():
            source = self._properties(self.state.datasets[source_id])
            layer = next(lay for lay in source["dataLayers"] if lay["name"] == source_layer)
            layers.append({**layer, "name": name})
        props["dataLayers"] = layers
        return props

    def _dataset_json(self, ds: ServerDataset) -> dict[str, Any]:
        """test_remote_dataset/test_upload_download_roundtrip.yml GET /api/v12/datasets/<id>."""
        return {
            "id": ds.id,
            "name": ds.name,
            "dataSource": self._properties(ds),
            "dataStore": self._datastore(),
            "owningOrganization": ORG,
            "allowedTeams": [],
            "allowedTeamsCumulative": [],
            "isActive": True,
            "isPublic": False,
            "description": None,
            "directoryName": f"{ds.name}-{ds.id}",
            "created": ds.created,
            "isEditable": True,
            "lastUsedByUser": ds.created,
            "logoUrl": "/assets/images/mpi-logos.svg",
            "sortingKey": ds.created,
            "metadata": [],
            "isUnreported": False,
            "tags": [],
            "folderId": "570b9f4e4bb848d0885ea917",
            "usedStorageBytes": 0,
            "isVirtual": True,
        }

    def _datastore(self) -> dict[str, Any]:
        """test_api_client/test_datastore_list.yml GET /api/v12/datastores (one entry)."""
        return {
            "name": "localhost",
            "url": self.url,
            "allowsUpload": True,
            "jobsSupportedByAvailableWorkers": [],
            "jobsEnabled": False,
        }

    def _zarr_file(self, path: str, range_header: str | None) -> tuple[int, Any, dict[str, str]]:
        match = re.fullmatch(r"/data/v\d+/zarr/([^/]+)/(.*)", path)
        if match is None or match.group(1) not in self.state.datasets:
            return 404, _messages("error", DATASET_NOT_FOUND.format(match and match.group(1))), {}
        ds = self.state.datasets[match.group(1)]
        rest = unquote(match.group(2))
        if rest == "datasource-properties.json":
            return 200, json.dumps(self._properties(ds)).encode(), {}
        layer, _, inner = rest.partition("/")
        while layer in ds.linked:  # a linked layer's files are those of the layer it links
            source_id, layer = ds.linked[layer]
            ds = self.state.datasets[source_id]
        root = ds.path.resolve()
        file = (root / layer / inner).resolve()
        if root not in file.parents or not file.is_file():
            return 404, b"", {}
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
                {"Content-Range": f"bytes {start}-{end}/{len(data)}", "Accept-Ranges": "bytes"},
            )
        return 200, data, {"Accept-Ranges": "bytes"}

    # -- uploads (test_remote_dataset/test_upload_download_roundtrip.yml) ----------------------
    def _reserve_upload(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        folder = self.root / "uploads" / re.sub(r"[^A-Za-z0-9_.-]", "_", body["uploadId"])
        folder.mkdir(parents=True, exist_ok=True)
        for link in body.get("layersToLink") or []:
            if link["datasetId"] not in self.state.datasets:
                # conf/messages dataSet.upload.invalidLinkedLayers
                return 400, _messages("error", "Could not link all requested layers"), {}
        self.state.uploads[body["uploadId"]] = Upload(
            name=body["name"], layers_to_link=body.get("layersToLink") or [], folder=folder
        )
        return 200, b"", {}

    def _upload_chunk(self, form: dict[str, bytes]) -> tuple[int, Any, dict[str, str]]:
        identifier = form["resumableIdentifier"].decode()
        upload_id, _, relative = identifier.partition("/")
        upload = self.state.uploads.get(upload_id)
        if upload is None:
            return 400, _messages("error", "Cannot find the uploaded DataSet."), {}
        target = (upload.folder / relative).resolve()
        if upload.folder.resolve() not in target.parents:
            return 400, b"", {}
        target.parent.mkdir(parents=True, exist_ok=True)
        number = int(form["resumableChunkNumber"])
        size = int(form["resumableChunkSize"])
        with target.open("r+b" if target.exists() else "wb") as out:
            out.seek((number - 1) * size)
            out.write(form["file"])
        return 200, b"", {}

    def _finish_upload(self, upload_id: str) -> tuple[int, Any, dict[str, str]]:
        """The new dataset's id (the caller wraps it in the version's JSON), or the refusal."""
        upload = self.state.uploads.pop(upload_id, None)
        if upload is None:
            return 400, _messages("error", "Cannot find the uploaded DataSet."), {}
        if not _paths_stay_inside(upload.folder):
            shutil.rmtree(upload.folder, ignore_errors=True)
            return 400, _messages("error", DISALLOWED_PATHS), {}
        dataset_id = self.state.new_id()
        ds = ServerDataset(id=dataset_id, name=upload.name, path=upload.folder)
        for link in upload.layers_to_link:
            new_name = link.get("newLayerName") or link["layerName"]
            ds.linked[new_name] = (link["datasetId"], link["layerName"])
        self.state.datasets[dataset_id] = ds
        return 200, dataset_id, {}

    def _finish_dataset_upload(self, upload_id: str) -> tuple[int, Any, dict[str, str]]:
        """API 14+: UploadController.finishUpload (webknossos-datastore/app/com/scalableminds/
        webknossos/datastore/controllers/UploadController.scala of scalableminds/webknossos, as
        stored at 05522d43 and at 2c0d2135) answers ``Ok(Json.obj("datasetId" -> datasetId))``;
        an unknown upload id fails ``?~> Msg.Dataset.Upload.noSuchUpload``, a refused finish
        ``?~> Msg.Dataset.Upload.finishFailed(datasetId)`` over the datastore's own failure.
        A failure without a status is answered 400 as ``{"messages": [{"error": msg},
        {"chain": "[Server Time <time>]  <~ <cause>"}]}`` (ResultBox.asResult, formatChain and
        JsonResult in util/src/main/scala/com/scalableminds/util/mvc/ExtendedController.scala,
        as stored at d0c2d461)."""
        if upload_id not in self.state.uploads:
            return 400, _messages("error", NO_SUCH_UPLOAD.format(upload_id)), {}
        status, answer, headers = self._finish_upload(upload_id)
        if status == 200:
            return 200, {"datasetId": answer}, headers
        cause = "; ".join(v for m in answer["messages"] for v in m.values())
        when = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        messages = [
            {"error": FINISH_FAILED.format(self.state.new_id())},
            {"chain": f"[Server Time {when}]  <~ {cause}"},
        ]
        return status, {"messages": messages}, headers

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
        if path == "/api/buildinfo":  # test_api_client/test_build_info.yml (version: see above)
            return (
                200,
                {
                    "webknossos": {"name": "webknossos", "version": "stand-in"},
                    "schemaVersion": 145,
                    "httpApiVersioning": {
                        "currentApiVersion": self.api_version,
                        "oldestSupportedApiVersion": 5,
                    },
                    "localDataStoreEnabled": True,
                    "localTracingStoreEnabled": True,
                },
                {},
            )
        if token != self.state.token:
            return 401, _messages("error", NOT_AUTHORISED), {}
        with self.lock:
            if path.startswith("/data/"):
                self.state.requests.append(f"{method} {path}")
                return self._datastore_route(method, path, query, body, range_header)
            match = re.fullmatch(r"/api(?:/v\d+)?(/.*)", path)
            if match is None:
                return 404, b"", {}
            route = match.group(1)
            self.state.requests.append(f"{method} {route}")
            return self._route(method, route, query, body)

    def _datastore_route(
        self, method: str, path: str, query: dict[str, str], body: Any, range_header: str | None
    ) -> tuple[int, Any, dict[str, str]]:
        if method == "POST" and re.fullmatch(r"/data/v\d+/datasets/reserveUpload", path):
            return self._reserve_upload(body)
        if method == "POST" and path == "/data/datasets":
            return self._upload_chunk(body)
        if method == "POST" and re.fullmatch(r"/data/v\d+/datasets/finishUpload", path):
            status, answer, headers = self._finish_upload(body["uploadId"])
            return status, ({"newDatasetId": answer} if status == 200 else answer), headers
        # API 14+ (datastore.latest.routes, see the module's docstring)
        if method == "POST" and re.fullmatch(
            r"/data/v\d+/datasets/upload/dataset/reserveUpload", path
        ):
            info = body["resumableUploadInfo"]
            return self._reserve_upload(
                {"uploadId": info["uploadId"], "name": body["datasetName"],
                 "layersToLink": body.get("layersToLink") or []}
            )  # fmt: skip
        if method == "POST" and re.fullmatch(r"/data/v\d+/datasets/upload/dataset", path):
            return self._upload_chunk(body)
        if method == "POST" and re.fullmatch(
            r"/data/v\d+/datasets/upload/dataset/finishUpload", path
        ):
            return self._finish_dataset_upload(query.get("uploadId", ""))
        if method in ("GET", "HEAD"):
            return self._zarr_file(path, range_header)
        return 404, b"", {}

    def _route(
        self, method: str, route: str, query: dict[str, str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        s = self.state
        if method == "GET" and route == "/user":  # test_task/test_get_task.yml
            return 200, s.users[ADMIN_ID], {}
        if method == "GET" and route == "/users":  # test_user/test_get_all_managed_users.yml
            return 200, list(s.users.values()), {}
        if method == "GET" and route == "/teams":
            return 200, [TEAM], {}
        if method == "GET" and route == "/datastores":
            return 200, [self._datastore()], {}
        if method == "GET" and route == "/datasets":  # ?isActive&organizationId&searchQuery
            search = query.get("searchQuery", "")
            found = [
                self._dataset_json(d)
                for d in s.datasets.values()
                if search.lower() in d.name.lower()
            ]
            return 200, found, {}
        if m := re.fullmatch(r"/datasets/(.+)/isValidNewName", route):
            # valid: test_upload_download_roundtrip.yml; invalid: DatasetController
            # .isValidNewName answers 200 {"isValid": false, "errors": <the rule's message>}
            name = unquote(m.group(1))
            broken = next((msg for ok, msg in DATASET_NAME_RULES if not ok(name)), None)
            if broken is None:
                return 200, {"isValid": True}, {}
            return 200, {"isValid": False, "errors": broken}, {}
        if m := re.fullmatch(r"/datasets/([^/]+)", route):
            ds = s.datasets.get(m.group(1))
            if ds is None:
                return 404, _messages("error", DATASET_NOT_FOUND.format(m.group(1))), {}
            return 200, self._dataset_json(ds), {}
        if route == "/taskTypes":
            if method == "GET":
                return 200, list(s.task_types.values()), {}
            # test_task/test_get_task.yml POST /api/v12/taskTypes
            task_type = {
                "id": s.new_id(),
                "summary": body["summary"],
                "description": body["description"],
                "teamId": body["teamId"],
                "teamName": body["teamName"],
                "settings": {
                    "allowedModes": [],
                    "branchPointsAllowed": True,
                    "somaClickingAllowed": True,
                    "volumeInterpolationAllowed": False,
                    "mergerMode": False,
                    "magRestrictions": {},
                    **(body.get("settings") or {}),
                },
                "recommendedConfiguration": None,
                "tracingType": body["tracingType"],
            }
            s.task_types[task_type["id"]] = task_type
            return 200, task_type, {}
        if method == "POST" and route == "/projects":
            return self._create_project(body)
        if m := re.fullmatch(r"/projects/byName/(.+)", route):
            name = unquote(m.group(1))
            found = next((p for p in s.projects.values() if p["name"] == name), None)
            if found is None:
                return 404, _messages("error", PROJECT_NOT_FOUND), {}
            return 200, found, {}
        if m := re.fullmatch(r"/projects/([^/]+)/tasks", route):
            # test_project/test_project_get_tasks.yml: paged, X-Total-Count
            tasks = [t for t in s.tasks.values() if t["projectId"] == m.group(1)]
            limit = int(query.get("limit", 1000))
            page = int(query.get("pageNumber", 0))
            return 200, tasks[page * limit : (page + 1) * limit], {"X-Total-Count": str(len(tasks))}
        if m := re.fullmatch(r"/projects/([^/]+)", route):
            project = s.projects.get(m.group(1))
            if project is None:
                return 404, _messages("error", PROJECT_NOT_FOUND), {}
            return 200, project, {}
        if method == "POST" and route == "/tasks":
            # test_task/test_get_task.yml: one result per requested task
            return 200, {"tasks": [self._create_task(p) for p in body], "warnings": []}, {}
        if m := re.fullmatch(r"/tasks/([^/]+)/annotations", route):
            # not recorded: app/controllers/AnnotationController.scala annotationsForTask
            # (scalableminds/webknossos) answers Ok(JsArray) of each annotation's publicWrites,
            # the shape of the recorded GET /annotations/<id>/info (test_annotation_info.yml);
            # an unknown task: task.notFound ~> NOT_FOUND
            if m.group(1) not in s.tasks:
                return 404, _messages("error", TASK_NOT_FOUND), {}
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
            if task is None:  # test_task/test_delete_task.yml
                return 404, _messages("error", TASK_NOT_FOUND), {}
            if method == "DELETE":
                # the server deletes the task's annotations with it, work in progress included
                del s.tasks[m.group(1)]
                for key in [k for k, a in s.annotations.items() if a.task_id == m.group(1)]:
                    del s.annotations[key]
                return 200, _messages("success", TASK_REMOVED), {}
            return 200, task, {}
        if m := re.fullmatch(r"/annotations/([^/]+)/info", route):
            annotation = s.annotations.get(m.group(1))
            if annotation is None:
                return 404, _messages("error", ANNOTATION_NOT_FOUND), {}
            return 200, self._annotation_json(annotation), {}
        if m := re.fullmatch(r"/annotations/([^/]+)/download", route):
            annotation = s.annotations.get(m.group(1))
            if annotation is None:
                return 404, _messages("error", ANNOTATION_NOT_FOUND), {}
            # test_annotation/test_bounding_box_roundtrip.yml
            return (
                200,
                annotation.data,
                {"Content-Disposition": f'attachment;filename="{annotation.filename}"'},
            )
        return 404, b"", {}

    def _create_project(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        """test_project/test_project_create.yml POST /api/v12/projects."""
        s = self.state
        if not PROJECT_NAME.fullmatch(body["name"]):
            return 400, _messages("error", PROJECT_NAME_INVALID), {}
        if any(p["name"] == body["name"] for p in s.projects.values()):
            return 400, _messages("error", PROJECT_NAME_TAKEN.format(body["name"])), {}
        project = {
            "name": body["name"],
            "team": body["team"],
            "teamName": TEAM["name"],
            "owner": _compact(s.users[body.get("owner") or ADMIN_ID]),
            "priority": body["priority"],
            "paused": body["paused"],
            "expectedTime": body.get("expectedTime"),
            "isBlacklistedFromReport": body["isBlacklistedFromReport"],
            "id": s.new_id(),
            "created": int(time.time() * 1000),
        }
        s.projects[project["id"]] = project
        return 200, project, {}

    def _create_task(self, params: dict[str, Any]) -> dict[str, Any]:
        """One entry of test_task/test_get_task.yml POST /api/v12/tasks; a refusal is
        ``{"status": 400, "error": <reason>}`` (the library's ApiSingleTaskCreationResult)."""
        s = self.state
        s.task_creations += 1
        refused = next((r for n, r in s.refusals if n == s.task_creations), None)
        if refused is not None:
            return {"status": 400, "error": refused}
        project = next((p for p in s.projects.values() if p["name"] == params["projectName"]), None)
        if project is None:
            return {"status": 400, "error": PROJECT_NOT_FOUND}
        task_type = s.task_types.get(params["taskTypeId"])
        if task_type is None:  # conf/messages taskType.notFound
            return {"status": 400, "error": "Selected task type doesn\u2019t exist"}
        dataset = s.datasets.get(params["datasetId"])
        if dataset is None:
            return {"status": 400, "error": DATASET_NOT_FOUND.format(params["datasetId"])}
        task = {
            "id": s.new_id(),
            "projectId": project["id"],
            "projectName": project["name"],
            "team": TEAM["name"],
            "type": task_type,
            "datasetName": dataset.name,
            "datasetId": dataset.id,
            "neededExperience": params["neededExperience"],
            "created": int(time.time() * 1000),
            "status": {"pending": params["pendingInstances"], "active": 0, "finished": 0},
            "script": None,
            "tracingTime": None,
            "creationInfo": None,
            "boundingBox": params.get("boundingBox"),
            "editPosition": params["editPosition"],
            "editRotation": params["editRotation"],
        }
        s.tasks[task["id"]] = task
        return {"status": 200, "success": task}

    def _annotation_json(self, a: Annotation) -> dict[str, Any]:
        """test_api_client/test_annotation_info.yml GET /api/v12/annotations/<id>/info."""
        owner = _compact(self.state.users.get(a.owner) or self.state.users[ANNOTATOR_ID])
        return {
            "modified": a.modified,
            "state": a.state,
            "isLockedByOwner": False,
            "id": a.id,
            "name": a.filename,
            "description": "",
            "viewConfiguration": None,
            "typ": "Task" if a.task_id else "Explorational",
            "task": None,
            "stats": {},
            "annotationLayers": [],
            "organization": ORG,
            "visibility": "Internal",
            "tracingTime": 60000,
            "teams": [],
            "tags": [],
            "owner": owner,
            "contributors": [],
            "othersMayEdit": False,
        }


def _paths_stay_inside(folder: Path) -> bool:
    """Every explicit mag and attachment path of the uploaded datasource stays inside the
    uploaded dataset: relative and not climbing out (``..``), or a remote URL (s3, https,
    gs), as the datastore's pathIsAllowedToAddDirectly allows."""
    props_file = folder / "datasource-properties.json"
    if not props_file.is_file():
        return True
    props = json.loads(props_file.read_text())
    paths: list[str] = []
    for layer in props.get("dataLayers", []):
        paths += [m["path"] for m in layer.get("mags", []) if m.get("path")]
        for kind in (layer.get("attachments") or {}).values():
            items = kind if isinstance(kind, list) else [kind]
            paths += [a["path"] for a in items if isinstance(a, dict) and a.get("path")]
    for text in paths:
        scheme = urlparse(text).scheme
        if scheme in ("s3", "https", "http", "gs"):
            continue
        local = text[len("file://") :] if text.startswith("file://") else text
        if Path(local).is_absolute() or ".." in Path(local).parts:
            return False
    return True


def _form(content_type: str, raw: bytes) -> dict[str, bytes]:
    """The fields of a ``multipart/form-data`` body (the resumable upload's chunks)."""
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    message = parser.parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    fields = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        fields[str(name)] = part.get_payload(decode=True) or b""
    return fields


def _handler(fake: FakeWebknossos) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self, method: str) -> None:
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            ctype = self.headers.get("Content-Type") or ""
            body: Any
            if ctype.startswith("multipart/form-data"):
                body = _form(ctype, raw)
            else:
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
            is_json = not isinstance(payload, bytes) or url.path.endswith(".json")
            self.send_header(
                "Content-Type", "application/json" if is_json else "application/octet-stream"
            )
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_HEAD(self) -> None:
            self._serve("HEAD")

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
def serve(
    token: str = "wk-secret-token", *, api_version: int = API_VERSION
) -> Iterator[FakeWebknossos]:
    root = Path(tempfile.mkdtemp(prefix="wk-stand-in-"))
    fake = FakeWebknossos(token, root=root, api_version=api_version)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True, name="fake-webknossos")
    thread.start()
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """The stand-in as a process of its own (``python -m tests.wkserver --token T --dataset
    ID=PATH:NAME --api-version 16``): prints its URL and its data folder, one per line, and
    serves until it is terminated. The service under test then shares no memory and no folder
    with the server it publishes to."""
    import argparse
    import signal

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--token", default="wk-secret-token")
    ap.add_argument("--api-version", type=int, default=API_VERSION)
    ap.add_argument("--dataset", action="append", default=[], help="ID=PATH:NAME")
    args = ap.parse_args()
    with serve(args.token, api_version=args.api_version) as fake:
        for spec in args.dataset:
            dataset_id, _, rest = spec.partition("=")
            path, _, name = rest.partition(":")
            fake.add_dataset(dataset_id, Path(path), name=name or None)
        print(fake.url, flush=True)
        print(fake.root, flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()


if __name__ == "__main__":
    main()
