"""Label file records: what a file said, before it is placed on a dataset, and the words
and limits the file readers (:mod:`server.labels.files`, :mod:`server.labels.nml`) share."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from models.vocab import ARTIFACT_TYPES
from server.errors import InvalidInput

Vec3 = tuple[int, int, int]
RecordKind = Literal["centre", "patch", "box"]

CENTRE: Final = "centre"
"""A node at the centre of a patch of the dataset's patch size."""
PATCH: Final = "patch"
"""A patch exactly as given (top-left and size)."""
BOX: Final = "box"
"""A region whose grid patches get the verdict (overlapping for artifact, inside for clean)."""

# An unpacked NML is rarely above a few MB; this bounds what a hostile zip can make us inflate.
MAX_NML_BYTES: Final = 256 * 1024 * 1024


@dataclass(frozen=True)
class ZipLimits:
    """What a zip may hold: NML members, and bytes once all of them are inflated."""

    members: int = 1000
    inflated_bytes: int = MAX_NML_BYTES


DEFAULT_TYPE_ALIASES: Final[Mapping[str, str | None]] = {
    **{name: name for name in ARTIFACT_TYPES},
    "circle": "circular",
    "ring": "circular",
    "charging": "circular",
    "chargingring": "circular",
    "arc": "horseshoe",
    "scratches": "scratch",
    "solidshape": "debris",
    "particle": "debris",
    "particles": "debris",
    "dirt": "debris",
    "dust": "debris",
    "folds": "fold",
    "wrinkle": "fold",
    "missingtile": "missing",
    "missingtiles": "missing",
    "missingbeam": "missing",
    "missingdata": "missing",
    "brightness": "contrast",
    "exposure": "contrast",
    "badexposure": "contrast",
    "blur": "defocus",
    "blurry": "defocus",
    "outoffocus": "defocus",
}
"""Normalised name -> artifact type; ``None`` means a known name that carries no type."""

CLEAN_WORDS: Final = frozenset({"clean", "noartifact"})
ARTIFACT_WORDS: Final = frozenset({"artifact", "artefact"})
UNTYPED_WORDS: Final = frozenset({"", "none", "untyped"})
# Names webKnossos or people give trees without meaning anything: "001", "Tree007", "node 3".
PLAIN_NAME = re.compile(r"^\s*(tree|node|group)?[\s_#.-]*\d*\s*$", re.IGNORECASE)
DIGIT_VERDICT = re.compile(r":\s*([01])\s*$")


def normalise_name(name: str) -> str:
    return re.sub(r"[\s_.\-]", "", name.strip().lower())


def build_type_mapping(overrides: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The default aliases with the caller's ``name -> type`` entries on top.

    A value of ``none`` (or empty) makes a name known but typeless."""
    mapping: dict[str, str | None] = dict(DEFAULT_TYPE_ALIASES)
    for name, value in (overrides or {}).items():
        key = normalise_name(name)
        if not key:
            raise InvalidInput("type mapping: names must not be empty")
        target = value.strip().lower() if value is not None else ""
        if target in UNTYPED_WORDS:
            mapping[key] = None
        elif target in ARTIFACT_TYPES:
            mapping[key] = target
        else:
            raise InvalidInput(
                f"type mapping {name!r} -> {value!r}: the type must be one of "
                f"{', '.join(ARTIFACT_TYPES)} (or 'none')"
            )
    return mapping


@dataclass(frozen=True)
class Verdict:
    label: str
    artifact_type: str | None = None
    annotator: str | None = None
    """``None``: the person importing the file."""


@dataclass(frozen=True)
class LabelRecord:
    """One verdict found in a file, before it is placed on a dataset."""

    kind: RecordKind
    position: Vec3
    """Node position for :data:`CENTRE`, top-left corner otherwise."""
    size: Vec3
    """``(w, h, d)``; ``(0, 0, 0)`` for :data:`CENTRE`."""
    label: str
    artifact_type: str | None
    annotator: str | None
    """Who gave the verdict when the file says so; ``None``: the person importing it."""
    ref: str
    """Where in the file the record comes from, for people reading labels later."""


@dataclass
class ParsedLabelFile:
    filename: str
    format: str
    """``nml``, ``zip`` or ``datasource-json``."""
    records: list[LabelRecord] = field(default_factory=list)
    dataset_name: str | None = None
    voxel_size: tuple[float, float, float] | None = None
    """Nanometres, when the file says."""
    owner: str | None = None
    """The annotation's owner (NML ``username``), when the file says."""
    warnings: list[str] = field(default_factory=list)


# -- formatting and small parts -------------------------------------------------------------------
def finish(parsed: ParsedLabelFile) -> None:
    if not parsed.records:
        parsed.warnings.append(
            f"{parsed.filename} holds no labels: no bounding boxes named artifact/clean, no "
            "artifact centre nodes, no patch outlines with a verdict, no data sources"
        )


def vec3(values: Sequence[Any]) -> Vec3:
    return (round(values[0]), round(values[1]), round(values[2]))


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word if count == 1 else (many or word + 's')}"


def some(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) if not n.startswith("'") else n for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def format_voxel(voxel: Sequence[float]) -> str:
    return " x ".join(f"{v:g}" for v in voxel) + " nm"


def format_voxel_size(voxel: Sequence[float]) -> str:
    """``32 x 32 x 35 nm``."""
    return format_voxel(voxel)
