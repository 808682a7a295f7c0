"""Proposals as webKnossos tasks: the task type and project (created once), one task per
proposed patch, the server's refusals with their reasons, whether anybody can be assigned the
tasks, and the cleanup of tasks whose patch was answered elsewhere.

The server assigns a task only to active members of its team who hold the task's experience
domain (:data:`EXPERIENCE_DOMAIN`, any value): an admin grants it once per annotator on the
server's Users screen. A task someone is working on is never deleted (that would delete the
annotator's work): it stays, and its annotation is imported when finished.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from server.db.base import utcnow, write_transaction
from server.db.tables import AnnotationTask, Dataset, WkTask
from server.db.vocabulary import TaskStatus
from server.errors import InvalidInput
from server.pixels.source import parse_mag
from server.settings import Settings
from server.webknossos.client import (
    WebknossosError,
    link_of,
    project_name,
    refusal,
    server_reason,
    status_of,
)
from server.webknossos.report import SyncReport
from server.wklib import ApiClientError, UnexpectedStatusError, wk

EXPERIENCE_DOMAIN = "artifact-loop"


# -- push ------------------------------------------------------------------------------------------
def _team(settings: Settings) -> Any:
    """The team owning the task type and projects: ``wk_team``, or the first one listed."""
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
    return team


def _ensure_project(settings: Settings, dataset: Dataset) -> tuple[str, str]:
    """The task type's id and the project's name, created on first use."""
    team = _team(settings)
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
    return task_type.task_type_id, name


def _find_project(name: str) -> Any:
    """The project, or None when the server has none by that name (its 404 for that is a
    ``ValueError`` of the library; any other refusal is raised)."""
    try:
        return wk.Project.get_by_name(name)
    except ValueError:
        return None


class _TaskErrors(logging.Handler):
    """What the library logs about task creation: ``Task.create`` returns only the created
    tasks, logs each refusal's reason at ERROR and each of the server's warnings (e.g. a team
    that cannot read the dataset) at WARNING, each after a header line."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.reasons: list[str] = []
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if re.fullmatch(r"\d+ tasks could not be created:", text) or re.fullmatch(
            r"There were \d+ warnings during task creation:", text
        ):
            return
        if record.levelno >= logging.ERROR:
            self.reasons.append(text)
        else:
            self.warnings.append(text)


@contextmanager
def _task_errors() -> Iterator[_TaskErrors]:
    handler = _TaskErrors()
    library = logging.getLogger("webknossos.administration.task")
    level = library.level
    library.addHandler(handler)
    if library.getEffectiveLevel() > logging.WARNING:
        library.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        library.removeHandler(handler)
        library.setLevel(level)


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
                    AnnotationTask.status == TaskStatus.OPEN,
                    AnnotationTask.id.not_in(pushed),
                )
                .order_by(AnnotationTask.rank, AnnotationTask.id)
            )
        ]
    if todo:
        _push(sessions, settings, dataset, todo=todo, link=link, report=report)
    _check_assignable(sessions, settings, dataset, report=report)


def _push(
    sessions: sessionmaker[Session],
    settings: Settings,
    dataset: Dataset,
    *,
    todo: list[tuple[int, int, int, int, int, int]],
    link: dict[str, Any],
    report: SyncReport,
) -> None:
    mag = parse_mag(dataset.mag)
    cx, cy = settings.wk_context_px * mag[0], settings.wk_context_px * mag[1]
    task_type_id, project = _ensure_project(settings, dataset)
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
        report.warnings += [
            f"creating the task for the patch at ({x}, {y}, {z}): {w}" for w in refused.warnings
        ]
        with write_transaction(sessions) as session:  # recorded one by one: a crash loses none
            for remote in created:
                session.add(
                    WkTask(dataset_id=dataset.id, task_id=task_id, wk_task_id=remote.task_id)
                )
        report.pushed += len(created)


def _check_assignable(
    sessions: sessionmaker[Session], settings: Settings, dataset: Dataset, *, report: SyncReport
) -> None:
    """Open pushed tasks nobody can be given: no active member of the project's team holds
    the experience domain the tasks need (``report.unassignable``; a warning says why and
    which admin step fixes it)."""
    with write_transaction(sessions) as session:
        open_tasks = len(
            session.scalars(
                select(WkTask.id).where(WkTask.dataset_id == dataset.id, WkTask.state == "open")
            ).all()
        )
    if not open_tasks:
        return
    team = _team(settings)
    try:
        users = wk.User.get_all_managed_users()
    except ApiClientError as exc:  # a token that may not list users: say so, push anyway
        report.warnings.append(
            f"could not check who can be assigned the tasks: {server_reason(str(exc))}"
        )
        return
    able = [
        u
        for u in users
        if u.is_active
        and EXPERIENCE_DOMAIN in (u.experiences or {})
        and any(t.id == team.id for t in u.teams)
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


# -- cleanup ---------------------------------------------------------------------------------------
def cancel_labelled_elsewhere(
    sessions: sessionmaker[Session], dataset: Dataset, *, report: SyncReport
) -> None:
    """Pushed tasks nobody started in webKnossos whose patch was answered elsewhere; a task
    someone is working on stays (its annotation is imported when finished)."""
    with write_transaction(sessions) as session:
        stale = [
            (p.id, p.wk_task_id)
            for p in session.scalars(
                select(WkTask)
                .join(AnnotationTask, AnnotationTask.id == WkTask.task_id)
                .where(
                    WkTask.dataset_id == dataset.id,
                    WkTask.state == "open",
                    AnnotationTask.status.in_(
                        (TaskStatus.LABELLED, TaskStatus.SKIPPED, TaskStatus.RETIRED)
                    ),
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
        except UnexpectedStatusError as exc:
            if status_of(exc) != 404:  # refused (400, 403) or failed (5xx): still on the server
                report.delete_refused.append(f"task {wk_task_id} kept as pushed: {refusal(exc)}")
                continue
            # 404: already gone on the server (test_task/test_delete_task.yml)
        with write_transaction(sessions) as session:
            row = session.get(WkTask, row_id)
            if row is not None:
                row.state, row.updated_at = "cancelled", utcnow()
        report.cancelled += 1
