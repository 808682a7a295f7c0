"""Importing label files into a dataset, and exporting its labels for people to check.

An import places every record of a file (see :mod:`server.labels.files`) on the dataset,
checks all of them, and only then inserts; a bad file changes nothing. It is idempotent:
each label gets a key derived from what it says (dataset, patch, verdict, who, source), not
from the file, so the same file twice, or the same verdict in two files, adds it once.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, NoReturn

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.vocab import LABEL_ARTIFACT, LABEL_CLEAN
from server.datasets.service import grid_of
from server.db.base import utcnow
from server.db.tables import LABEL_SOURCES, Dataset, Label
from server.errors import Conflict, InvalidInput
from server.labels.export import (  # noqa: F401 - they were here before
    EXPORT_COLUMNS,
    export_labels_csv,
    export_labels_json,
)
from server.labels.files import parse_label_file
from server.labels.records import BOX, CENTRE, LabelRecord, ZipLimits, format_voxel_size
from server.pixels.source import patch_extent

MAX_LABELS_PER_IMPORT: Final = 250_000
"""A file that would add more (a clean box over a whole dataset) is refused."""
UNTYPED: Final = "untyped"
_QUERY_CHUNK = 500
_VOXEL_TOLERANCE = 1e-3


@dataclass
class ImportReport:
    dataset: str
    filename: str
    format: str
    found: int = 0
    """Labels the file holds, placed on the dataset (bounding boxes expanded to patches)."""
    added: int = 0
    added_by_class: dict[str, int] = field(default_factory=dict)
    added_by_type: dict[str, int] = field(default_factory=dict)
    """Artifact labels added per type; ``untyped`` for those without one."""
    added_by_annotator: dict[str, int] = field(default_factory=dict)
    skipped_existing: int = 0
    """Already in the database (imported before, from this file or another)."""
    duplicates_in_file: int = 0
    conflicts: int = 0
    """Added labels whose patch already had a label with the other verdict."""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Placed:
    x: int
    y: int
    z: int
    w: int
    h: int
    label: str
    artifact_type: str | None
    annotator: str
    ref: str

    @property
    def patch(self) -> tuple[int, int, int, int, int]:
        return (self.x, self.y, self.z, self.w, self.h)


def _placed_at(
    record: LabelRecord, annotator: str, *, at: tuple[int, int, int], size: tuple[int, ...]
) -> _Placed:
    """``record``'s verdict on the patch at ``at`` of ``size`` (width, height)."""
    (x, y, z), (w, h) = at, size
    return _Placed(
        x=x,
        y=y,
        z=z,
        w=w,
        h=h,
        label=record.label,
        artifact_type=record.artifact_type,
        annotator=annotator,
        ref=record.ref,
    )


def import_label_file(
    session: Session,
    *,
    dataset: Dataset,
    filename: str,
    data: bytes,
    annotator: str,
    annotator_id: int | None = None,
    source: str = "file",
    type_map: dict[str, str] | None = None,
    zip_limits: ZipLimits | None = None,
) -> ImportReport:
    """Import the labels of one file into ``dataset`` within the caller's transaction.

    Labels the file attributes to named people (``AK: debris``) carry those names; all
    others are ``annotator``'s (with ``annotator_id``). Raises :class:`InvalidInput` for a
    file that cannot be read or does not fit the dataset; nothing is added then.
    """
    annotator = annotator.strip()
    if not annotator:
        raise InvalidInput("the annotator name must not be empty")
    if len(annotator) > 200:
        raise InvalidInput("the annotator name must be at most 200 characters")
    if source not in LABEL_SOURCES:
        raise InvalidInput(
            f"unknown label source {source!r}; use one of {', '.join(LABEL_SOURCES)}"
        )
    parsed = parse_label_file(
        filename=filename, data=data, type_map=type_map, zip_limits=zip_limits
    )
    report = ImportReport(dataset=dataset.name, filename=filename, format=parsed.format)

    if parsed.voxel_size is not None and dataset.voxel_size:
        expected = tuple(float(v) for v in dataset.voxel_size)
        if len(expected) != 3 or not all(
            math.isclose(a, b, rel_tol=_VOXEL_TOLERANCE)
            for a, b in zip(parsed.voxel_size, expected, strict=True)
        ):
            raise InvalidInput(
                f"{filename} has voxel size {format_voxel_size(parsed.voxel_size)}, but dataset "
                f"{dataset.name!r} has {format_voxel_size(expected)}: "
                "it was made on another dataset"
            )
    if parsed.dataset_name and parsed.dataset_name != dataset.name:
        report.warnings.append(
            f"{filename} was made on dataset {parsed.dataset_name!r}; imported into "
            f"{dataset.name!r} with its coordinates as they are"
        )
    report.warnings.extend(parsed.warnings)

    placed = _place(dataset, parsed.records, annotator=annotator, report=report)
    report.found = len(placed)
    _check_inside(dataset, placed, filename=filename)

    keyed: dict[str, _Placed] = {}
    for item in placed:
        key = label_key(
            dataset_id=dataset.id,
            patch=item.patch,
            label=item.label,
            annotator=item.annotator,
            source=source,
        )
        if key in keyed:
            report.duplicates_in_file += 1
        else:
            keyed[key] = item
    existing = _existing_keys(session, keys=keyed)
    new = {key: item for key, item in keyed.items() if (item.annotator, key) not in existing}
    report.skipped_existing = len(keyed) - len(new)
    report.conflicts = _count_conflicts(session, dataset_id=dataset.id, items=list(new.values()))

    now = utcnow()
    rows = [
        {
            "dataset_id": dataset.id,
            "x": item.x,
            "y": item.y,
            "z": item.z,
            "w": item.w,
            "h": item.h,
            "label": item.label,
            "artifact_type": item.artifact_type if item.label == LABEL_ARTIFACT else None,
            "annotator": item.annotator,
            "annotator_id": annotator_id if item.annotator == annotator else None,
            "source": source,
            "source_ref": f"{filename}: {item.ref}"[:300],
            "task_id": None,
            "idempotency_key": key,
            "created_at": now,
        }
        for key, item in new.items()
    ]
    if rows:
        try:
            with session.begin_nested():
                session.execute(insert(Label), rows)
        except IntegrityError:
            raise Conflict(
                f"labels of {filename} were imported at the same moment by another import; "
                "run the import again (labels already there are skipped)"
            ) from None

    report.added = len(rows)
    by_class: Counter[str] = Counter({LABEL_ARTIFACT: 0, LABEL_CLEAN: 0})
    by_type: Counter[str] = Counter()
    by_annotator: Counter[str] = Counter()
    for item in new.values():
        by_class[item.label] += 1
        by_annotator[item.annotator] += 1
        if item.label == LABEL_ARTIFACT:
            by_type[item.artifact_type or UNTYPED] += 1
    report.added_by_class = dict(by_class)
    report.added_by_type = dict(sorted(by_type.items()))
    report.added_by_annotator = dict(sorted(by_annotator.items()))
    return report


def label_key(
    *,
    dataset_id: int,
    patch: tuple[int, int, int, int, int],
    label: str,
    annotator: str,
    source: str,
) -> str:
    """Idempotency key of an imported label: what it says, not which file said it.

    The type is left out, so importing again with another type mapping adds nothing."""
    text = "|".join(str(v) for v in (dataset_id, *patch, label, annotator, source))
    return "import:" + hashlib.sha256(text.encode()).hexdigest()


def _place(
    dataset: Dataset, records: Sequence[LabelRecord], *, annotator: str, report: ImportReport
) -> list[_Placed]:
    """Turn records into patches of this dataset (centres -> patch size, boxes -> grid)."""
    width, height = patch_extent(dataset)
    grid = None
    out: list[_Placed] = []
    empty_boxes: list[str] = []
    for record in records:
        who = record.annotator or annotator
        x, y, z = record.position
        if record.kind == CENTRE:
            out.append(
                _placed_at(
                    record, who, at=(x - width // 2, y - height // 2, z), size=(width, height)
                )
            )
        elif record.kind == BOX:
            _check_box_inside(dataset, record)
            grid = grid or grid_of(dataset)
            step_x, step_y = grid.stride * grid.mag[0], grid.stride * grid.mag[1]
            w, h, d = record.size
            at_most = (-(-w // step_x) + 1) * (-(-h // step_y) + 1) * -(-d // grid.mag[2])
            if len(out) + at_most > MAX_LABELS_PER_IMPORT:
                _too_many(len(out) + at_most)  # refuse before listing the patches
            if record.label == LABEL_ARTIFACT:
                indices = grid.overlapping(record.position, record.size)
            else:
                indices = grid.contained(record.position, record.size)
            if indices.size == 0:
                empty_boxes.append(record.ref)
                continue
            if len(out) + indices.size > MAX_LABELS_PER_IMPORT:
                _too_many(len(out) + int(indices.size))
            ex, ey, _ = grid.patch_extent
            out.extend(
                _placed_at(record, who, at=(px, py, pz), size=(ex, ey))
                for px, py, pz in grid.origins(indices).tolist()
            )
        else:
            out.append(_placed_at(record, who, at=(x, y, z), size=record.size[:2]))
        if len(out) > MAX_LABELS_PER_IMPORT:
            _too_many(len(out))
    if empty_boxes:
        report.warnings.append(
            f"{len(empty_boxes)} clean bounding box(es) hold no whole grid patch and gave no "
            f"labels: {', '.join(empty_boxes[:5])}"
        )
    return out


def _too_many(count: int) -> NoReturn:
    raise InvalidInput(
        f"the file holds too many labels (about {count:,}); one import may add at most "
        f"{MAX_LABELS_PER_IMPORT:,}: split it or draw smaller bounding boxes"
    )


def _bbox_text(d: Dataset) -> str:
    return ",".join(str(v) for v in (d.bbox_x, d.bbox_y, d.bbox_z, d.bbox_w, d.bbox_h, d.bbox_d))


def _check_box_inside(dataset: Dataset, record: LabelRecord) -> None:
    lo = (dataset.bbox_x, dataset.bbox_y, dataset.bbox_z)
    hi = (lo[0] + dataset.bbox_w, lo[1] + dataset.bbox_h, lo[2] + dataset.bbox_d)
    for axis in range(3):
        if record.position[axis] < lo[axis] or record.position[axis] + record.size[axis] > hi[axis]:
            box = ",".join(str(v) for v in (*record.position, *record.size))
            raise InvalidInput(
                f"{record.ref} ({box}) reaches outside dataset {dataset.name!r} "
                f"(bounding box {_bbox_text(dataset)}); nothing was imported"
            )


def _check_inside(dataset: Dataset, placed: Sequence[_Placed], *, filename: str) -> None:
    """Every patch must lie inside the dataset's bounding box (as for labels made by hand)."""
    x0, y0, z0 = dataset.bbox_x, dataset.bbox_y, dataset.bbox_z
    x1, y1, z1 = x0 + dataset.bbox_w, y0 + dataset.bbox_h, z0 + dataset.bbox_d
    outside = [
        f"{item.ref} at ({item.x}, {item.y}, {item.z})"
        for item in placed
        if not (
            x0 <= item.x
            and item.x + item.w <= x1
            and y0 <= item.y
            and item.y + item.h <= y1
            and z0 <= item.z < z1
        )
    ]
    if outside:
        shown = "; ".join(outside[:3])
        more = f" and {len(outside) - 3} more" if len(outside) > 3 else ""
        raise InvalidInput(
            f"{filename}: {len(outside)} of {len(placed)} labels lie (partly) outside dataset "
            f"{dataset.name!r} (bounding box {_bbox_text(dataset)}): {shown}{more}. Was the file "
            "made on another dataset? Nothing was imported"
        )


def _chunks(values: Sequence[Any], size: int = _QUERY_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _existing_keys(session: Session, *, keys: Mapping[str, _Placed]) -> set[tuple[str, str]]:
    """``(annotator, key)`` of the labels already there; per annotator, as the unique index."""
    by_annotator: dict[str, list[str]] = defaultdict(list)
    for key, item in keys.items():
        by_annotator[item.annotator].append(key)
    found: set[tuple[str, str]] = set()
    for who, wanted in by_annotator.items():
        for chunk in _chunks(wanted):
            rows = session.scalars(
                select(Label.idempotency_key).where(
                    Label.annotator == who, Label.idempotency_key.in_(chunk)
                )
            )
            found.update((who, key) for key in rows if key is not None)
    return found


def _count_conflicts(session: Session, *, dataset_id: int, items: Sequence[_Placed]) -> int:
    wanted: dict[tuple[int, int, int, int, int], set[str]] = defaultdict(set)
    for item in items:
        wanted[item.patch].add(item.label)
    if not wanted:
        return 0
    verdicts: dict[tuple[int, int, int, int, int], set[str]] = defaultdict(set)
    zs = sorted({patch[2] for patch in wanted})
    for chunk in _chunks(zs):
        rows = session.execute(
            select(Label.x, Label.y, Label.z, Label.w, Label.h, Label.label).where(
                Label.dataset_id == dataset_id, Label.z.in_(chunk)
            )
        )
        for x, y, z, w, h, value in rows:
            patch = (x, y, z, w, h)
            if patch in wanted:
                verdicts[patch].add(value)
    conflicts = 0
    for item in items:
        if verdicts.get(item.patch, set()) - {item.label}:
            conflicts += 1
    return conflicts
