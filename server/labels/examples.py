"""Examples the labeling page's type guide may show: labels someone has confirmed, not just
any first three (an unreviewed example teaches a mistake to every annotator after)."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from server.db.tables import AnnotationTask, Annotator, Label

# how many candidate labels of a type are looked at, newest first
CANDIDATES = 400


def type_examples(
    session: Session, *, dataset_id: int, artifact_type: str, limit: int = 3
) -> list[Label]:
    """Artifact labels of ``artifact_type`` that are agreed (two or more annotators gave that
    verdict at the position and nobody another) or reviewed (given by an admin, or on a
    patch an admin resolved on the review list); newest first."""
    candidates = list(
        session.scalars(
            select(Label)
            .where(
                Label.dataset_id == dataset_id,
                Label.label == "artifact",
                Label.artifact_type == artifact_type,
            )
            .order_by(Label.id.desc())
            .limit(CANDIDATES)
        )
    )
    if not candidates:
        return []
    positions = {(c.x, c.y, c.z) for c in candidates}
    verdicts: dict[tuple[int, int, int], dict[str, set[tuple[str, str | None]]]] = defaultdict(
        lambda: defaultdict(set)
    )
    for x, y, z, who, verdict, kind in session.execute(
        select(Label.x, Label.y, Label.z, Label.annotator, Label.label, Label.artifact_type).where(
            Label.dataset_id == dataset_id, tuple_(Label.x, Label.y, Label.z).in_(positions)
        )
    ):
        verdicts[(x, y, z)][who].add((verdict, kind))
    admins = set(session.scalars(select(Annotator.id).where(Annotator.role == "admin")))
    resolved = set(
        session.scalars(
            select(AnnotationTask.id).where(
                AnnotationTask.dataset_id == dataset_id, AnnotationTask.resolved_at.is_not(None)
            )
        )
    )
    out: list[Label] = []
    seen: set[tuple[int, int, int]] = set()
    for label in candidates:
        at = (label.x, label.y, label.z)
        if at in seen:
            continue
        given = verdicts[at]
        said = {v for per_annotator in given.values() for v in per_annotator}
        agreed = len(given) >= 2 and said == {("artifact", artifact_type)}
        reviewed = label.annotator_id in admins or label.task_id in resolved
        if agreed or reviewed:
            out.append(label)
            seen.add(at)
        if len(out) >= limit:
            break
    return out
