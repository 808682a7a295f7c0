"""webKnossos server integration: push proposed patches as tasks, pull finished annotations.

A dataset is linked to its copy on a webKnossos server (``settings["webknossos"]``: the
server's dataset id, whether to push tasks, instances per task). The server URL and token
are the service's settings; the token is only ever handed to the ``webknossos`` library.

A ``sync`` job (queue ``io``; on demand, after each proposal and periodically):

1. pushes open proposals that are not on the server yet as tasks of the project
   ``<prefix>-<dataset>`` (task type and project created once), one task per patch with its
   bounding box plus context;
2. downloads every finished annotation of the project's tasks, and annotations given by id
   or URL, and imports each with the label-file conventions (:mod:`server.labels.importer`),
   one transaction per annotation; an annotation is imported again only when its
   ``modified`` time changed, and the import's idempotency keys keep labels from counting
   twice;
3. deletes pushed tasks whose patch was labelled elsewhere (in the web page or the API)
   before anyone started them in webKnossos; a task someone is working on is left on the
   server (deleting it would delete that annotator's work) and its annotation, once
   finished, is imported like any other: one more person's verdict on the patch.

The server assigns a task only to users who hold its experience domain
(:data:`EXPERIENCE_DOMAIN`, any value): an admin grants it once per annotator on the
server's Users screen. The sync reports pushed tasks that no active user of the team can be
assigned. A task the server refuses to create fails the sync with the server's reason (what
could be imported still is); it is offered again on the next sync.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from server.db.base import utcnow, write_transaction
from server.db.tables import AnnotationTask, Dataset, WkAnnotation, WkTask
from server.errors import ArtifactLoopError, InvalidInput, ServiceUnavailable
from server.settings import Settings
from server.webknossos.lib import wk

log = logging.getLogger(__name__)

EXPERIENCE_DOMAIN = "artifact-loop"
DATASET_ID = re.compile(r"^[0-9a-f]{24}$")  # the server's ids are MongoDB-style ObjectIds
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")  # all a project name may contain


class WebknossosError(ArtifactLoopError):
    """The webKnossos server refused or could not be reached."""

    status_code = 502


@dataclass
class SyncReport:
    pushed: int = 0
    cancelled: int = 0
    annotations_seen: int = 0
    annotations_imported: int = 0
    annotations_unchanged: int = 0
    labels_added: int = 0
    kept_in_progress: int = 0
    unassignable: int = 0
    errors: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pushed": self.pushed,
            "refused": self.refused,
            "unassignable": self.unassignable,
            "cancelled": self.cancelled,
            "kept_in_progress": self.kept_in_progress,
            "warnings": self.warnings,
            "annotations_seen": self.annotations_seen,
            "annotations_imported": self.annotations_imported,
            "annotations_unchanged": self.annotations_unchanged,
            "labels_added": self.labels_added,
            "errors": self.errors,
        }


def link_of(dataset: Dataset) -> dict[str, Any] | None:
    link = (dataset.settings or {}).get("webknossos")
    return link if isinstance(link, dict) and link.get("dataset_id") else None


def project_name(settings: Settings, dataset: Dataset) -> str:
    """``<prefix>-<dataset name>`` with every run of characters the server does not allow in
    a project name (anything but letters, digits, ``_`` and ``-``) made one ``_``."""
    name = _NAME_CHARS.sub("_", f"{settings.wk_project_prefix}-{dataset.name}").strip("_")
    return name[:100] or "artifact-loop"


def server_reason(text: str) -> str:
    """The server's own words from a library error: the ``messages`` of its JSON body (or the
    body itself), without the request boilerplate around them."""
    _, sep, body = text.partition(" with body")
    if not sep:
        return " ".join(line.strip() for line in text.splitlines() if line.strip())
    body = body.split(": ", 1)[1] if ": " in body else body
    body = body.strip()
    try:
        data = json.loads(body)
    except ValueError:
        return body[:500]
    messages = data.get("messages") if isinstance(data, dict) else None
    if isinstance(messages, list):
        said = [str(v) for m in messages if isinstance(m, dict) for v in m.values()]
        if said:
            return "; ".join(said)
    return body[:500]


@contextmanager
def server(settings: Settings) -> Iterator[None]:
    """The library's context for the configured server, with its failures as clear errors."""
    from webknossos.client.api_client.errors import ApiClientError

    if not settings.wk_url or settings.wk_token is None:
        raise InvalidInput(
            "no webKnossos server configured: set ARTIFACT_LOOP_WK_URL and ARTIFACT_LOOP_WK_TOKEN"
        )
    url = settings.wk_url.rstrip("/")
    try:
        with wk.webknossos_context(
            url=url, token=settings.wk_token.get_secret_value(), timeout=settings.wk_timeout_s
        ):
            yield
    except httpx.TransportError as exc:
        raise ServiceUnavailable(
            f"webKnossos server {url} is unreachable ({type(exc).__name__})"
        ) from None
    except ApiClientError as exc:
        text = str(exc)
        if "status 401" in text or "status 403" in text:
            raise WebknossosError(
                f"webKnossos server {url} refused the token (401/403): check ARTIFACT_LOOP_WK_TOKEN"
                f" ({server_reason(text)})"
            ) from None
        status = re.search(r"response status (\d+)", text)
        request = re.search(r"performing a (\w+) request for URL (\S+)", text)
        where = f"{request.group(1)} {request.group(2).split('?')[0]} " if request else ""
        code = f"answered {status.group(1)}: " if status else ""
        raise WebknossosError(
            f"webKnossos server {url}: {where}{code}{server_reason(text)}"
        ) from None


# -- push ------------------------------------------------------------------------------------------
def _ensure_project(settings: Settings, dataset: Dataset) -> tuple[str, str, str]:
    """The task type's id, the project's name and the team's id, created on first use."""
    teams = wk.Team.get_list()
    if not teams:
        raise WebknossosError("the webKnossos user is in no team: add it to one")
    team = (
        next((t for t in teams if t.name == settings.wk_team), None)
        if settings.wk_team
        else teams[0]
    )
    if team is None:
        raise InvalidInput(f"webKnossos has no team {settings.wk_team!r}")
    try:
        task_type = wk.TaskType.get_by_name(settings.wk_task_type)
    except ValueError:
        task_type = wk.TaskType.create(
            name=settings.wk_task_type,
            description=(
                "Is there an imaging artifact in the box? Draw a bounding box named "
                "'artifact:<type>' (or 'artifact') over it, or one named 'clean' over the "
                "whole box, then finish the task."
            ),
            team=team,
            tracing_type="skeleton",
        )
    name = project_name(settings, dataset)
    if _find_project(name) is None:
        wk.Project.create(name=name, team=team, priority=100, paused=False, expected_time=2)
    return task_type.task_type_id, name, team.id


def _find_project(name: str) -> Any:
    """The project, or None when the server has none by that name (its 404 for that is a
    ``ValueError`` of the library; any other refusal is raised)."""
    try:
        return wk.Project.get_by_name(name)
    except ValueError:
        return None


class _TaskErrors(logging.Handler):
    """What the library logs for tasks the server refused: ``Task.create`` returns only the
    created ones and logs each refusal's reason."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if not re.fullmatch(r"\d+ tasks could not be created:", text):
            self.reasons.append(text)


@contextmanager
def _task_errors() -> Iterator[_TaskErrors]:
    handler = _TaskErrors()
    library = logging.getLogger("webknossos.administration.task")
    library.addHandler(handler)
    try:
        yield handler
    finally:
        library.removeHandler(handler)


def push_proposals(
    sessions: sessionmaker[Session], settings: Settings, dataset: Dataset, *, report: SyncReport
) -> None:
    """Open proposals not yet on the server become tasks (``report.pushed``); the ones the
    server refuses go to ``report.refused`` with its reason."""
    link = link_of(dataset)
    if link is None or not link.get("push"):
        return
    with write_transaction(sessions) as session:
        pushed = select(WkTask.task_id).where(
            WkTask.dataset_id == dataset.id, WkTask.task_id.is_not(None)
        )
        todo = [
            (t.id, t.x, t.y, t.z, t.w, t.h)
            for t in session.scalars(
                select(AnnotationTask)
                .where(
                    AnnotationTask.dataset_id == dataset.id,
                    AnnotationTask.kind == "proposal",
                    AnnotationTask.status == "open",
                    AnnotationTask.id.not_in(pushed),
                )
                .order_by(AnnotationTask.rank, AnnotationTask.id)
            )
        ]
    if not todo:
        return
    from server.pixels.source import parse_mag

    mag = parse_mag(dataset.mag)
    cx, cy = settings.wk_context_px * mag[0], settings.wk_context_px * mag[1]
    task_type_id, project, team_id = _ensure_project(settings, dataset)
    for task_id, x, y, z, w, h in todo:
        with _task_errors() as refused:
            created = wk.Task.create(
                task_type_id=task_type_id,
                project_name=project,
                needed_experience_domain=EXPERIENCE_DOMAIN,
                needed_experience_value=0,
                starting_position=(x + w // 2, y + h // 2, z),
                dataset_id=str(link["dataset_id"]),
                instances=int(link.get("instances", 1)),
                bounding_box=wk.BoundingBox((x - cx, y - cy, z), (w + 2 * cx, h + 2 * cy, 1)),
            )
        if not created:
            reason = "; ".join(refused.reasons) or "no task created and no reason given"
            report.refused.append(f"patch at ({x}, {y}, {z}): {reason}")
        with write_transaction(sessions) as session:  # recorded one by one: a crash loses none
            for remote in created:
                session.add(
                    WkTask(dataset_id=dataset.id, task_id=task_id, wk_task_id=remote.task_id)
                )
        report.pushed += len(created)
    _check_assignable(sessions, settings, dataset, team_id=team_id, report=report)


def _check_assignable(
    sessions: sessionmaker[Session],
    settings: Settings,
    dataset: Dataset,
    *,
    team_id: str,
    report: SyncReport,
) -> None:
    """Open pushed tasks nobody can be given: no active member of the project's team holds
    the experience domain the tasks need."""
    with write_transaction(sessions) as session:
        open_tasks = len(
            session.scalars(
                select(WkTask.id).where(WkTask.dataset_id == dataset.id, WkTask.state == "open")
            ).all()
        )
    if not open_tasks:
        return
    users = wk.User.get_all_managed_users()
    able = [
        u
        for u in users
        if u.is_active
        and EXPERIENCE_DOMAIN in (u.experiences or {})
        and any(t.id == team_id for t in u.teams)
    ]
    if able:
        return
    report.unassignable = open_tasks
    report.warnings.append(
        f"nobody can be assigned the {open_tasks} open task(s): no active user of the team "
        f"holds the experience {EXPERIENCE_DOMAIN!r}; an admin grants it on the webKnossos "
        "Users screen (select the annotators, Change Experience, domain "
        f"{EXPERIENCE_DOMAIN!r}, value 0)"
    )


# -- pull ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Finished:
    annotation_id: str
    modified: int
    owner: str | None
    wk_task_id: str | None
    problem: str | None = None  # why it cannot be read, found while listing


def _finished_annotations(settings: Settings, dataset: Dataset) -> list[_Finished]:
    project = _find_project(project_name(settings, dataset))
    if project is None:
        return []  # nothing pushed yet
    out = []
    for task in project.get_tasks(fetch_all=True):
        if task.status.finished_instance_count == 0:
            continue
        for info in task.get_annotation_infos():
            if str(info.state.value).lower() == "finished":
                out.append(_Finished(info.id, int(info.modified or 0), info.owner_id, task.task_id))
    return out


def _annotation_ref(value: str) -> str:
    """An annotation id from an id or a webKnossos annotation URL."""
    text = value.strip()
    if "/annotations/" in text:
        text = text.split("/annotations/", 1)[1].split("/")[0].split("#")[0].split("?")[0]
    if not text or not text.replace("-", "").replace("_", "").isalnum() or len(text) > 100:
        raise InvalidInput(f"{value!r} is not a webKnossos annotation id or URL")
    return text


def _explicit_annotations(refs: list[str]) -> list[_Finished]:
    """Annotations given by id: their ``time`` (the last save) stands for ``modified``."""
    out = []
    for ref in refs:
        annotation = _fetch(ref)
        if isinstance(annotation, str):
            out.append(_Finished(ref, 0, None, None, problem=annotation))
            continue
        out.append(_Finished(ref, int(annotation.time or 0), annotation.owner_name, None))
    return out


def _fetch(annotation_id: str) -> Any:
    """The annotation as the library reads it, or why it cannot be read."""
    from webknossos.client.api_client.errors import ApiClientError

    try:
        return wk.Annotation.download(annotation_id, skip_volume_data=True)
    except (ApiClientError, httpx.TransportError):
        raise
    except Exception as exc:  # what the library raises for a file it cannot parse varies
        return f"not a readable webKnossos annotation ({type(exc).__name__}: {exc})"


def _download(annotation_id: str) -> tuple[str, bytes] | str:
    """The annotation as a file the label importer reads (``.nml``, or ``.zip`` when it has
    volume layers; their data left out), or why it cannot be read."""
    annotation = _fetch(annotation_id)
    if isinstance(annotation, str):
        return annotation
    suffix = ".zip" if annotation.get_volume_layer_names() else ".nml"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{annotation_id}{suffix}"
        annotation.save(path)
        return path.name, path.read_bytes()


def pull_annotations(
    sessions: sessionmaker[Session],
    settings: Settings,
    dataset: Dataset,
    *,
    ids: list[str],
    report: SyncReport,
) -> None:
    from server.labels.importer import import_label_file

    candidates = _finished_annotations(settings, dataset) if link_of(dataset) else []
    candidates += _explicit_annotations(ids)
    report.annotations_seen = len(candidates)
    for item in candidates:
        with write_transaction(sessions) as session:
            seen = _imported(session, dataset_id=dataset.id, annotation_id=item.annotation_id)
            if seen is not None and seen.modified == item.modified:
                report.annotations_unchanged += 1
                continue
        downloaded = item.problem or _download(item.annotation_id)
        if isinstance(downloaded, str):
            report.errors.append(f"annotation {item.annotation_id}: {downloaded}")
            continue
        filename, data = downloaded
        try:
            with write_transaction(sessions) as session:
                ds = session.get(Dataset, dataset.id)
                assert ds is not None
                imported = import_label_file(
                    session,
                    dataset=ds,
                    filename=filename,
                    data=data,
                    annotator=f"webknossos:{item.owner or 'unknown'}",
                    source="webknossos",
                )
                row = _imported(session, dataset_id=dataset.id, annotation_id=item.annotation_id)
                if row is None:
                    row = WkAnnotation(
                        dataset_id=dataset.id,
                        annotation_id=item.annotation_id,
                        wk_task_id=item.wk_task_id,
                        labels_added=0,
                    )
                    session.add(row)
                row.modified = item.modified
                row.labels_added += imported.added
                row.imported_at = utcnow()
                if item.wk_task_id is not None:
                    _task_finished(session, dataset_id=dataset.id, wk_task_id=item.wk_task_id)
        except InvalidInput as exc:
            report.errors.append(f"annotation {item.annotation_id}: {exc}")
            continue
        report.annotations_imported += 1
        report.labels_added += imported.added


def _imported(session: Session, *, dataset_id: int, annotation_id: str) -> WkAnnotation | None:
    return session.scalar(
        select(WkAnnotation).where(
            WkAnnotation.dataset_id == dataset_id, WkAnnotation.annotation_id == annotation_id
        )
    )


def _task_finished(session: Session, *, dataset_id: int, wk_task_id: str) -> None:
    pushed = session.scalar(
        select(WkTask).where(WkTask.dataset_id == dataset_id, WkTask.wk_task_id == wk_task_id)
    )
    if pushed is None:
        return
    pushed.state, pushed.updated_at = "finished", utcnow()
    if pushed.task_id is not None:
        task = session.get(AnnotationTask, pushed.task_id)
        if task is not None and task.status in ("open", "leased", "expired"):
            task.status, task.updated_at = "labelled", utcnow()


def cancel_labelled_elsewhere(
    sessions: sessionmaker[Session], dataset: Dataset, *, report: SyncReport
) -> None:
    """Pushed tasks nobody started in webKnossos whose patch was answered elsewhere; a task
    someone is working on stays (its annotation is imported when finished)."""
    from webknossos.client.api_client.errors import UnexpectedStatusError

    with write_transaction(sessions) as session:
        stale = [
            (p.id, p.wk_task_id)
            for p in session.scalars(
                select(WkTask)
                .join(AnnotationTask, AnnotationTask.id == WkTask.task_id)
                .where(
                    WkTask.dataset_id == dataset.id,
                    WkTask.state == "open",
                    AnnotationTask.status.in_(("labelled", "skipped", "retired")),
                )
            )
        ]
    for row_id, wk_task_id in stale:
        try:
            remote = wk.Task.get_by_id(wk_task_id)
            if remote.status.finished_instance_count > 0:
                continue  # its annotation is on its way in
            if remote.status.active_instance_count > 0:
                report.kept_in_progress += 1  # deleting it would delete the work in progress
                continue
            remote.delete()
        except UnexpectedStatusError:
            pass  # already gone on the server
        with write_transaction(sessions) as session:
            row = session.get(WkTask, row_id)
            if row is not None:
                row.state, row.updated_at = "cancelled", utcnow()
        report.cancelled += 1


def check_sync(settings: Settings, dataset: Dataset, params: dict[str, Any]) -> list[str]:
    """The annotation ids a sync imports besides the project's; raises InvalidInput for a
    sync that cannot work (no server configured, nothing linked, malformed references)."""
    if not settings.wk_url or settings.wk_token is None:
        raise InvalidInput(
            "no webKnossos server configured: set ARTIFACT_LOOP_WK_URL and ARTIFACT_LOOP_WK_TOKEN"
        )
    refs = params.get("annotations") or []
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise InvalidInput("annotations must be a list of annotation ids or URLs")
    if link_of(dataset) is None and not refs:
        raise InvalidInput(
            f"dataset {dataset.name!r} is not linked to a webKnossos dataset: "
            "PUT /datasets/{id}/webknossos first, or give annotations to import"
        )
    return [_annotation_ref(r) for r in refs]


def sync(
    sessions: sessionmaker[Session], settings: Settings, dataset: Dataset, params: dict[str, Any]
) -> SyncReport:
    ids = check_sync(settings, dataset, params)
    report = SyncReport()
    with server(settings):
        push_proposals(sessions, settings, dataset, report=report)
        pull_annotations(sessions, settings, dataset, ids=ids, report=report)
        if link_of(dataset) is not None:
            cancel_labelled_elsewhere(sessions, dataset, report=report)
    if report.refused:
        # what was pushed and imported is kept; the refused proposals are offered again
        raise WebknossosError(
            f"webKnossos refused {len(report.refused)} task(s) "
            f"({report.pushed} pushed, {report.labels_added} label(s) imported): "
            + "; ".join(report.refused + report.errors)
        )
    return report


def find_dataset_id(settings: Settings, *, name: str) -> str:
    """The server's id of its dataset called ``name`` (for an admin who knows only the name)."""
    with server(settings):
        ids = sorted(wk.RemoteDataset.list(name=name).keys())
    if not ids:
        raise InvalidInput(
            f"the webKnossos server has no dataset named {name!r} that this token can see"
        )
    if len(ids) > 1:
        raise InvalidInput(
            f"the webKnossos server has {len(ids)} datasets named {name!r} ({', '.join(ids)}): "
            "link by dataset_id"
        )
    return ids[0]
