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

Pushing and cleaning up tasks live in :mod:`server.webknossos.tasks`, the server context and
its errors in :mod:`server.webknossos.client`; this module pulls annotations and runs the job.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from server.annotation import task_state
from server.db.base import utcnow, write_transaction
from server.db.tables import AnnotationTask, Dataset, WkAnnotation, WkTask
from server.db.vocabulary import TaskStatus
from server.errors import InvalidInput, ServiceUnavailable
from server.labels.importer import import_label_file
from server.settings import Settings
from server.webknossos.client import (
    DATASET_ID,
    WebknossosError,
    link_of,
    project_name,
    refusal,
    server,
    server_reason,
)
from server.webknossos.report import SyncReport
from server.webknossos.strays import remove_stray_clicks
from server.webknossos.tasks import (
    EXPERIENCE_DOMAIN,
    _find_project,
    cancel_labelled_elsewhere,
    push_proposals,
)
from server.wklib import ApiClientError, wk

__all__ = [
    "DATASET_ID",
    "EXPERIENCE_DOMAIN",
    "SyncReport",
    "WebknossosError",
    "cancel_labelled_elsewhere",
    "check_sync",
    "find_dataset_id",
    "link_of",
    "project_name",
    "pull_annotations",
    "push_proposals",
    "server",
    "server_reason",
    "sync",
]

log = logging.getLogger(__name__)


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


# webKnossos' own page routes for an annotation (frontend/javascripts/router/router.tsx of
# scalableminds/webknossos at 62cece84): /annotations/:id and /annotations/:type/:id[/readOnly],
# with or without the host, a hash (#x,y,z,...) or a query; the compound types name a task,
# project or task type, not one annotation
_ANNOTATION_TYPES = ("Task", "Explorational")
_COMPOUND_TYPES = ("CompoundTask", "CompoundProject", "CompoundTaskType")


def _annotation_ref(value: str) -> str:
    """An annotation id from an id or a webKnossos annotation URL of any form."""
    text = value.strip().split("#", 1)[0].split("?", 1)[0]
    if "/annotations/" in text or text.startswith("annotations/"):
        parts = [p for p in text.split("annotations/", 1)[1].split("/") if p]
        if parts and parts[0] in _COMPOUND_TYPES:
            raise InvalidInput(
                f"{value!r} is a {parts[0]} view (all annotations of a task, project or task "
                "type), not one annotation: give the annotations' own ids or URLs"
            )
        if parts and parts[0] in _ANNOTATION_TYPES:
            parts = parts[1:]
        text = parts[0] if parts else ""
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
    try:
        return wk.Annotation.download(annotation_id, skip_volume_data=True)
    except (ApiClientError, httpx.TransportError):
        raise
    except Exception as exc:  # what the library raises for a file it cannot parse varies
        return f"not a readable webKnossos annotation ({type(exc).__name__}: {exc})"


def _download(annotation_id: str, *, strays: list[str] | None = None) -> tuple[str, bytes] | str:
    """The annotation as a file the label importer reads (``.nml``, or ``.zip`` when it has
    volume layers; their data left out), or why it cannot be read. With ``strays`` (a task's
    annotation), stray skeleton clicks are taken out first and described there."""
    annotation = _fetch(annotation_id)
    if isinstance(annotation, str):
        return annotation
    if strays is not None:
        strays += remove_stray_clicks(annotation)
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
    candidates = _finished_annotations(settings, dataset) if link_of(dataset) else []
    candidates += _explicit_annotations(ids)
    report.annotations_seen = len(candidates)
    for item in candidates:
        with write_transaction(sessions) as session:
            seen = _imported(session, dataset_id=dataset.id, annotation_id=item.annotation_id)
            if seen is not None and seen.modified == item.modified:
                report.annotations_unchanged += 1
                continue
        strays: list[str] = []
        downloaded = item.problem or _download(
            item.annotation_id, strays=strays if item.wk_task_id is not None else None
        )
        if isinstance(downloaded, str):
            report.errors.append(f"annotation {item.annotation_id}: {downloaded}")
            continue
        if strays:
            report.strays.append(
                f"annotation {item.annotation_id} (task {item.wk_task_id}): "
                f"{len(strays)} stray skeleton click(s) not imported ({'; '.join(strays)}); "
                "the task asks for a bounding box named 'artifact:<type>' or 'clean'"
            )
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
        if task is not None and task.status in (TaskStatus.LEASED, *task_state.WAITING):
            task_state.set_state(task, task_state.finished_elsewhere())
            task.updated_at = utcnow()


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
    from webknossos.client.api_client.errors import ApiClientError

    with server(settings):
        try:
            push_proposals(sessions, settings, dataset, report=report)
        except ApiClientError as exc:  # what could be pulled and cleaned up still is
            report.refused.append(f"pushing tasks: {refusal(exc)}")
        pull_annotations(sessions, settings, dataset, ids=ids, report=report)
        if link_of(dataset) is not None:
            cancel_labelled_elsewhere(sessions, dataset, report=report)
    return report  # refused tasks are reported by the job (server/pipeline/sync.py)


def find_dataset_id(settings: Settings, *, name: str) -> str:
    """The server's id of its dataset called ``name`` (for an admin who knows only the name);
    a server that refuses or cannot be reached is the caller's input problem here (422)."""
    try:
        with server(settings):
            ids = sorted(wk.RemoteDataset.list(name=name).keys())
    except (WebknossosError, ServiceUnavailable) as exc:
        raise InvalidInput(f"cannot look up the dataset {name!r}: {exc}") from None
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
