"""Proposals and the audit set: which grid patches annotators are offered, and which the
acquisition must never pick."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import Insert, bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.acquisition import draw_audit_set
from server.acquisition.relabel import REASON as RELABEL
from server.annotation import task_state
from server.annotation.overlap import (
    AUDIT_LABELS_WANTED,
    half_done,
    overlap_share,
    proposal_labels_wanted,
)
from server.annotation.relabel import second_looks
from server.annotation.review import kept_for_review
from server.db.base import utcnow
from server.db.tables import PROPOSAL_IN_PLAY, AnnotationTask, Dataset, Label
from server.db.vocabulary import TaskStatus
from server.pixels.grid import Grid
from server.pixels.source import patch_extent


def excluded_indices(session: Session, *, dataset: Dataset, grid: Grid) -> np.ndarray:
    """Grid patches acquisition must not propose: the audit set, labelled patches (labels
    match the grid by overlap of more than half a patch) and tasks leased or labelled."""
    blocked: list[np.ndarray] = []
    tasks = session.execute(
        select(AnnotationTask.grid_index).where(
            AnnotationTask.dataset_id == dataset.id,
            (AnnotationTask.kind == "audit") | AnnotationTask.status.in_(task_state.TAKEN),
            AnnotationTask.grid_index.is_not(None),
        )
    ).scalars()
    blocked.append(np.fromiter((int(t) for t in tasks if t is not None), dtype=np.int64))
    positions = session.execute(
        select(Label.x, Label.y, Label.z, Label.w, Label.h).where(Label.dataset_id == dataset.id)
    ).all()
    if positions:
        blocked.append(labelled_grid_indices(grid, np.asarray(positions, dtype=np.int64)))
    return np.unique(np.concatenate(blocked)) if blocked else np.empty(0, dtype=np.int64)


def labelled_grid_indices(grid: Grid, boxes: np.ndarray) -> np.ndarray:
    """Grid patches covered more than half by some label box ``(x, y, z, w, h)``."""
    found: list[np.ndarray] = []
    ex, ey, _ = grid.patch_extent
    for x, y, z, w, h in boxes:
        candidates = grid.overlapping((int(x), int(y), int(z)), (int(w), int(h), 1))
        if candidates.size == 0:
            continue
        org = grid.origins(candidates)
        ox = np.clip(np.minimum(org[:, 0] + ex, x + w) - np.maximum(org[:, 0], x), 0, None)
        oy = np.clip(np.minimum(org[:, 1] + ey, y + h) - np.maximum(org[:, 1], y), 0, None)
        found.append(candidates[ox * oy * 2 > ex * ey])
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


def ensure_audit_set(
    session: Session, *, dataset: Dataset, grid: Grid, size: int, seed: int = 0
) -> int:
    """Draw the audit set once, uniformly at random over the grid. Returns how many exist."""
    existing = session.scalar(
        select(func.count(AnnotationTask.id)).where(
            AnnotationTask.dataset_id == dataset.id, AnnotationTask.kind == "audit"
        )
    )
    if existing:
        return int(existing)

    indices = draw_audit_set(len(grid), min(size, len(grid) // 4), seed=seed + dataset.id)
    return add_audit_patches(session, dataset=dataset, grid=grid, indices=indices)


def add_audit_patches(
    session: Session, *, dataset: Dataset, grid: Grid, indices: np.ndarray
) -> int:
    """Make grid ``indices`` audit patches (``ensure_audit_set`` draws them at random;
    ``simulate`` holds out whole sections)."""
    origins = grid.origins(indices)
    w, h = patch_extent(dataset)
    for rank, (index, origin) in enumerate(zip(indices, origins, strict=True)):
        session.add(
            AnnotationTask(
                dataset_id=dataset.id,
                kind="audit",
                grid_index=int(index),
                x=int(origin[0]),
                y=int(origin[1]),
                z=int(origin[2]),
                w=w,
                h=h,
                # interleave audit patches with proposals: one in every few
                rank=rank * 4 + 3,
                reason="audit",
                labels_wanted=AUDIT_LABELS_WANTED,
                **task_state.new_task(),
            )
        )
    session.flush()
    return len(indices)


# Rank given to proposals of a replaced batch that were leased when it was replaced: given
# back (released, skipped, expired), they wait behind every batch ranked since.
SUPERSEDED_RANK = 1_000_000_000


class Batch(NamedTuple):
    """What :func:`replace_proposals` did: proposals added, and the first task id after
    every task that existed before it (the older ones are superseded)."""

    added: int
    first_new_id: int


def replace_proposals(
    session: Session,
    *,
    dataset: Dataset,
    grid: Grid,
    model_version_id: int | None,
    job_id: int | None,
    picks: list[dict[str, Any]],
) -> Batch:
    """Retire open proposals of older versions and add ``picks`` (each with ``index``,
    ``reason`` and score components) as the new ranked batch. After the commit, call
    :func:`demote_superseded` with the answer's ``first_new_id``.

    Annotators keep leasing and labelling meanwhile; two rules keep a patch from being
    labelled twice. The old open tasks are retired first: that locks them until the caller
    commits, so no lease can take one any more, and it waits for leases already taking one.
    Then the patches leased or labelled by now are looked up again (the picks were chosen
    earlier) and dropped from the batch. Leasing waits for the commit instead of finding
    every open task locked (see :func:`server.annotation.leasing.lease_next`), so everything
    that can be done before the retirement is, and the rows go in as one bulk insert.

    Replacements of one dataset run one after the other (:func:`_serialise_replacements`):
    two at once both retired the batch before them and left both new batches open. A patch
    in play in another batch all the same (a lease given back meanwhile) is left out of
    this one: the database keeps a patch in play in at most one batch. A proposal that has
    a label and waits for a second annotator is neither retired nor demoted.

    A seeded share of the new proposals (the dataset's ``overlap_share``) wants labels from
    two annotators (:mod:`server.annotation.overlap`).
    """
    _serialise_replacements(session, dataset_id=dataset.id)
    w, h = patch_extent(dataset)
    # before taking any lock: what was blocked when the picks were made, and the rows
    blocked = set(excluded_indices(session, dataset=dataset, grid=grid).tolist())
    picks = _unique(picks, blocked)
    share = overlap_share(dataset)
    now = utcnow()
    rows = []
    for pick in picks:
        relabel = pick.get("relabel")
        box: tuple[int, ...]
        index: int | None
        if relabel is None:
            index = new_index = int(pick["index"])
            box = (*(int(v) for v in grid.origins(new_index)[0]), w, h)
            wanted = proposal_labels_wanted(
                dataset_id=dataset.id, grid_index=new_index, share=share
            )
        else:  # a second look at a label, at its exact position, by one other annotator
            index = None if pick.get("index") is None else int(pick["index"])
            box, wanted = tuple(int(relabel[k]) for k in ("x", "y", "z", "w", "h")), 1
        rows.append(
            {
                "dataset_id": dataset.id, "kind": "proposal",
                "grid_index": index,
                "x": box[0], "y": box[1], "z": box[2], "w": box[3], "h": box[4],
                "model_version_id": model_version_id, "job_id": job_id,
                "p_artifact": _opt_float(pick.get("p_artifact")),
                "uncertainty": _opt_float(pick.get("uncertainty")),
                "recon_error": _opt_float(pick.get("recon_error")),
                "score": _opt_float(pick.get("score")),
                "reason": str(pick.get("reason", "")),
                "labels_wanted": wanted,
                **task_state.new_task(),
                "created_at": now, "updated_at": now,
            }
        )  # fmt: skip
    # from here until the caller commits, the old open proposals are locked
    session.execute(
        update(AnnotationTask)
        .where(
            AnnotationTask.dataset_id == dataset.id,
            AnnotationTask.kind == "proposal",
            AnnotationTask.status.in_(task_state.WAITING),
            ~kept_for_review(),
            ~half_done(),  # its first label waits for a second annotator
        )
        .values(task_state.retired())
        .values(updated_at=now)
    )
    taken_since = set(
        session.scalars(
            select(AnnotationTask.grid_index).where(
                AnnotationTask.dataset_id == dataset.id,
                # open ones left now: flagged unsure, kept for review
                AnnotationTask.status.in_((*task_state.TAKEN, TaskStatus.OPEN)),
                AnnotationTask.grid_index.is_not(None),
            )
        )
    )
    relabels = any(row["reason"] == RELABEL for row in rows)
    looked_at = second_looks(session, dataset_id=dataset.id) if relabels else set()
    rows = [
        row
        for row in rows
        if (row["reason"] != RELABEL and row["grid_index"] not in taken_since)
        or (row["reason"] == RELABEL and _box(row) not in looked_at)
    ]
    for rank, row in enumerate(rows):
        row["rank"] = rank * 4 // 3
    # every task of any dataset so far (the primary key's last entry, not a scan of the
    # dataset's tasks); the demotion filters by dataset itself
    last_old = session.scalar(select(func.max(AnnotationTask.id)))
    added = len(session.execute(_insert_in_play_once(session), rows).all()) if rows else 0
    _interleave_audit(session, dataset_id=dataset.id)
    return Batch(added=added, first_new_id=int(last_old or 0) + 1)


def _serialise_replacements(session: Session, *, dataset_id: int) -> None:
    """Wait for any other replacement of the dataset to commit, and hold it off until this
    transaction ends. PostgreSQL: a ``FOR NO KEY UPDATE`` lock on the dataset's row, which
    does not block labels or tasks referring to it. SQLite: a write to the row takes the
    database's write lock (already held in a :func:`write_transaction`)."""
    if session.get_bind().dialect.name == "postgresql":
        stmt = select(Dataset.id).where(Dataset.id == dataset_id).with_for_update(key_share=True)
        session.execute(stmt)
    else:
        session.execute(update(Dataset).where(Dataset.id == dataset_id).values(id=Dataset.id))


def _insert_in_play_once(session: Session) -> Insert:
    """A bulk insert of tasks that skips a patch already in play in another batch and
    returns the ids of the tasks added."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return (
        dialect.insert(AnnotationTask)
        .on_conflict_do_nothing(
            index_elements=["dataset_id", "grid_index"], index_where=text(PROPOSAL_IN_PLAY)
        )
        .returning(AnnotationTask.id)
    )


def demote_superseded(session: Session, *, dataset_id: int, first_new_id: int) -> int:
    """Move the proposals of older batches still in play behind the new batch, in a
    transaction of its own once the batch has committed. Returns how many were moved.

    A proposal leased when its batch was replaced keeps its lease: its annotator may still
    label it. Given back later, it would return to the queue at its old rank, ahead of the
    whole new batch, and every ``next`` would offer it first. Moved to
    :data:`SUPERSEDED_RANK`, it waits behind the new batch, and the next replacement retires
    it. Proposals given back while the replacement was committing are open again by now,
    and are caught the same way. (Not done inside the replacement: it would lock the leased
    rows, and every label of them would wait for the replacement's commit.)"""
    result = session.execute(
        update(AnnotationTask)
        .where(
            AnnotationTask.dataset_id == dataset_id,
            AnnotationTask.kind == "proposal",
            AnnotationTask.status.in_((TaskStatus.LEASED, *task_state.WAITING)),
            AnnotationTask.id < first_new_id,
            AnnotationTask.rank < SUPERSEDED_RANK,
            ~half_done(),  # keeps its place: its first label waits for a second annotator
        )
        .values(rank=AnnotationTask.rank + SUPERSEDED_RANK)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _interleave_audit(session: Session, *, dataset_id: int) -> None:
    """Ranks start again at 0 with every batch: the open audit patches are ranked anew, one
    in every four tasks, so the audit set keeps getting labels instead of waiting behind
    every batch to come."""
    waiting = session.execute(
        select(AnnotationTask.id)
        .where(
            AnnotationTask.dataset_id == dataset_id,
            AnnotationTask.kind == "audit",
            AnnotationTask.status == TaskStatus.OPEN,
        )
        .order_by(AnnotationTask.rank, AnnotationTask.id)
    ).scalars()
    params = [{"task_id": task_id, "new_rank": i * 4 + 3} for i, task_id in enumerate(waiting)]
    if params:
        table = AnnotationTask.__table__
        session.connection().execute(
            update(table)
            .where(table.c.id == bindparam("task_id"))
            .values(rank=bindparam("new_rank")),
            params,
        )


def _unique(picks: list[dict[str, Any]], blocked: set[int]) -> list[dict[str, Any]]:
    """New patches not blocked, each once; re-labels (of labelled patches) each once."""
    seen: set[int] = set()
    labels: set[int] = set()
    out: list[dict[str, Any]] = []
    for pick in picks:
        relabel = pick.get("relabel")
        if relabel is not None:
            if int(relabel["label_id"]) not in labels:
                labels.add(int(relabel["label_id"]))
                out.append(pick)
            continue
        index = int(pick["index"])
        if index not in blocked and index not in seen:
            seen.add(index)
            out.append(pick)
    return out


def _box(row: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return (row["x"], row["y"], row["z"], row["w"], row["h"])


def _opt_float(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)
