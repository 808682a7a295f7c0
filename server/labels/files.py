"""Reading label files into plain records; no database here.

Formats: webKnossos annotations (``.nml``, or a ``.zip`` holding NML files) and genEM3
data-source lists (``.json``). Coordinates are mag-1 voxels, as everywhere in webKnossos.

Conventions in NML files:

a. User bounding boxes named by class: ``artifact``, ``artifact:<type>`` (or a bare type
   name) and ``clean``. They become :data:`BOX` records; the importer turns them into grid
   patches (overlapping an artifact box -> artifact, inside a clean box -> clean). Boxes with
   other names (``Bounding box 1``) are ignored with a warning.
b. One-node trees mark artifact centres. The artifact type is the first known type name
   among the node's comment, the tree's name and its groups (innermost first). A comment or
   tree name that is neither a known type nor a plain number (``001``, ``Tree007``) is an
   unknown type: ``other``, with a warning. Group names that name no type (``otherExamples``,
   ``Additional_Locations``) just organise trees and leave them untyped.
c. Trees of several nodes in one z plane are patch outlines; the patch is the nodes' bounding
   rectangle. Their verdict comes from the tree name: a class name (``clean``,
   ``artifact:fold``); ``<annotator>: <verdict>`` pairs separated by commas (``sample index:
   299, AK: debris, Flo: clean`` -> one label by ``AK`` and one by ``Flo``); or a trailing
   ``:1`` / ``:0`` (genEM3 test boxes: ``patch00.00:1``; 1 = artifact, 0 = clean), which falls
   back to the same suffix on the tree's group (``plane:1``). Outlines without a verdict are
   skipped with a warning. One-node trees may carry verdict pairs or a suffix too.

Type names are matched case-insensitively, ignoring spaces, ``_``, ``-`` and ``.``, through
:data:`DEFAULT_TYPE_ALIASES` plus the caller's mapping. ``solidShape`` maps to ``debris``: in
the genEM3 training data the solid-shape examples are opaque particles lying on the section,
and genEM3 trained all of that file's examples as its "debris" class.

genEM3 data-source JSON (``{"datasource_0": {"input_bbox": [x, y, z, dx, dy, dz],
"target_class": 0 | 1, ...}, ...}``): each entry is a patch, one label per z slice;
``target_class`` 1 is artifact (untyped: genEM3's class mixes all kinds), 0 is clean.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Final, Literal

from models.vocab import ARTIFACT_TYPES, LABEL_ARTIFACT, LABEL_CLEAN
from server.errors import InvalidInput

if TYPE_CHECKING:
    pass

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

_CLEAN_WORDS: Final = frozenset({"clean", "noartifact"})
_ARTIFACT_WORDS: Final = frozenset({"artifact", "artefact"})
_UNTYPED_WORDS: Final = frozenset({"", "none", "untyped"})
# Names webKnossos or people give trees without meaning anything: "001", "Tree007", "node 3".
_PLAIN_NAME = re.compile(r"^\s*(tree|node|group)?[\s_#.-]*\d*\s*$", re.IGNORECASE)
_DIGIT_VERDICT = re.compile(r":\s*([01])\s*$")


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
        if target in _UNTYPED_WORDS:
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


def parse_label_file(
    *,
    filename: str,
    data: bytes,
    type_map: Mapping[str, str] | None = None,
    zip_limits: ZipLimits | None = None,
) -> ParsedLabelFile:
    """Read a label file; raises :class:`InvalidInput` for anything that is not one."""
    mapping = build_type_mapping(type_map)
    kind = _detect_format(filename, data)
    if kind == "json":
        return _parse_datasource_json(filename, data, mapping)
    from server.labels import nml  # it builds on the records defined here

    if kind == "zip":
        return nml.parse_zip(filename, data, mapping, limits=zip_limits or ZipLimits())
    parsed = ParsedLabelFile(filename=filename, format="nml")
    nml.read_nml_into(parsed, data=data, member=None, mapping=mapping)
    _finish(parsed)
    return parsed


def _detect_format(filename: str, data: bytes) -> str:
    suffix = PurePosixPath(filename).suffix.lower()
    head = data[:512].lstrip()
    if data[:4] == b"PK\x03\x04" or suffix == ".zip":
        return "zip"
    if suffix == ".json" or head[:1] in (b"{", b"["):
        return "json"
    if suffix == ".nml" or head[:1] == b"<" or head[:3] == b"\xef\xbb\xbf":
        return "nml"
    raise InvalidInput(
        f"{filename}: unsupported label file; expected a webKnossos annotation (.nml or .zip) "
        "or a genEM3 data-source list (.json)"
    )


# -- genEM3 data sources -------------------------------------------------------------------------
def _parse_datasource_json(
    filename: str, data: bytes, mapping: Mapping[str, str | None]
) -> ParsedLabelFile:
    del mapping  # data sources carry a class, not a type name
    try:
        content = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{filename} is not valid JSON ({exc})") from None
    entries: list[tuple[str, Any]]
    if isinstance(content, dict):
        entries = list(content.items())
    elif isinstance(content, list):
        entries = [(f"datasource_{i}", value) for i, value in enumerate(content)]
    else:
        entries = []
    if not entries or not all(isinstance(v, dict) and "input_bbox" in v for _, v in entries):
        raise InvalidInput(
            f"{filename} is not a genEM3 data-source list: expected entries with "
            "'input_bbox' and 'target_class'"
        )
    parsed = ParsedLabelFile(filename=filename, format="datasource-json")
    names: Counter[str] = Counter()
    for key, entry in entries:
        bbox = entry.get("input_bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 6
            or not all(isinstance(v, int | float) and float(v).is_integer() for v in bbox)
        ):
            raise InvalidInput(
                f"{filename}: {key} has input_bbox {bbox!r}; "
                "expected [x, y, z, dx, dy, dz] integers"
            )
        x, y, z, dx, dy, dz = (int(v) for v in bbox)
        if dx <= 0 or dy <= 0 or dz <= 0:
            raise InvalidInput(f"{filename}: {key} has an empty input_bbox {bbox!r}")
        target = entry.get("target_class")
        if isinstance(target, bool):
            target = int(target)
        if target not in (0, 1):
            raise InvalidInput(
                f"{filename}: {key} has target_class {target!r}; expected 1 (artifact) or "
                "0 (clean). Data sources without a class are not labels"
            )
        label = LABEL_ARTIFACT if target == 1 else LABEL_CLEAN
        for slice_z in range(z, z + dz):
            parsed.records.append(
                LabelRecord(
                    kind=PATCH,
                    position=(x, y, slice_z),
                    size=(dx, dy, 1),
                    label=label,
                    artifact_type=None,
                    annotator=None,
                    ref=f"{key}",
                )
            )
        path = entry.get("input_path")
        if isinstance(path, str):
            dataset = _dataset_of_wkw_path(path)
            if dataset:
                names[dataset] += 1
    if names:
        parsed.dataset_name = names.most_common(1)[0][0]
        if len(names) > 1:
            parsed.warnings.append(
                f"the data sources point at {len(names)} datasets ({_some(list(names))}); "
                "all were imported into one"
            )
    _finish(parsed)
    return parsed


def _dataset_of_wkw_path(path: str) -> str | None:
    """``.../<dataset>/<layer>/<mag>`` -> ``<dataset>``."""
    parts = [p for p in PurePosixPath(path).parts if p not in ("/", "")]
    return parts[-3] if len(parts) >= 3 else None


# -- formatting and small parts -------------------------------------------------------------------
def _finish(parsed: ParsedLabelFile) -> None:
    if not parsed.records:
        parsed.warnings.append(
            f"{parsed.filename} holds no labels: no bounding boxes named artifact/clean, no "
            "artifact centre nodes, no patch outlines with a verdict, no data sources"
        )


def _vec3(values: Sequence[Any]) -> Vec3:
    return (round(values[0]), round(values[1]), round(values[2]))


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else (plural or word + 's')}"


def _some(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) if not n.startswith("'") else n for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _format_voxel(voxel: Sequence[float]) -> str:
    return " x ".join(f"{v:g}" for v in voxel) + " nm"


def format_voxel_size(voxel: Sequence[float]) -> str:
    """``32 x 32 x 35 nm``."""
    return _format_voxel(voxel)
