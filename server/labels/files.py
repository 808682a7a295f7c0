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

import io
import json
import re
import tempfile
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final, Literal
from xml.etree.ElementTree import ParseError

from models.vocab import ARTIFACT_TYPES, LABEL_ARTIFACT, LABEL_CLEAN
from server.errors import InvalidInput

if TYPE_CHECKING:
    from server.webknossos.lib import wk

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
    *, filename: str, data: bytes, type_map: Mapping[str, str] | None = None
) -> ParsedLabelFile:
    """Read a label file; raises :class:`InvalidInput` for anything that is not one."""
    mapping = build_type_mapping(type_map)
    kind = _detect_format(filename, data)
    if kind == "zip":
        return _parse_zip(filename, data, mapping)
    if kind == "json":
        return _parse_datasource_json(filename, data, mapping)
    parsed = ParsedLabelFile(filename=filename, format="nml")
    _read_nml_into(parsed, data=data, member=None, mapping=mapping)
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


# -- webKnossos annotations ----------------------------------------------------------------------
def _parse_zip(filename: str, data: bytes, mapping: Mapping[str, str | None]) -> ParsedLabelFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise InvalidInput(f"{filename} is not a valid zip file") from None
    with archive:
        members = [
            info
            for info in archive.infolist()
            if info.filename.lower().endswith(".nml")
            and not info.is_dir()
            and not info.filename.startswith("__MACOSX/")
        ]
        if not members:
            names = ", ".join(i.filename for i in archive.infolist()[:5]) or "nothing"
            raise InvalidInput(
                f"{filename} holds no NML file (it holds {names}); export the annotation "
                "from webKnossos with its skeleton"
            )
        parsed = ParsedLabelFile(filename=filename, format="zip")
        voxel_sizes: set[tuple[float, float, float]] = set()
        for info in members:
            if info.file_size > MAX_NML_BYTES:
                raise InvalidInput(
                    f"{filename}: {info.filename} is {info.file_size:,} bytes unpacked, "
                    f"more than the {MAX_NML_BYTES:,} an NML may have"
                )
            try:
                content = archive.read(info)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise InvalidInput(f"{filename}: cannot unpack {info.filename}: {exc}") from None
            _read_nml_into(
                parsed,
                data=content,
                member=info.filename if len(members) > 1 else None,
                mapping=mapping,
            )
            if parsed.voxel_size is not None:
                voxel_sizes.add(parsed.voxel_size)
        if len(voxel_sizes) > 1:
            raise InvalidInput(
                f"{filename}: its NML files have different voxel sizes "
                f"({'; '.join(_format_voxel(v) for v in sorted(voxel_sizes))})"
            )
    _finish(parsed)
    return parsed


def _load_annotation(data: bytes, *, where: str) -> wk.Annotation:
    from server.webknossos.lib import wk

    # The library reads annotations from paths only.
    with tempfile.TemporaryDirectory(prefix="artifact-loop-nml-") as tmp:
        path = Path(tmp) / "annotation.nml"
        path.write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return wk.Annotation.load(path)
        except ParseError as exc:
            raise InvalidInput(f"{where} is not valid XML ({exc})") from None
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            raise InvalidInput(
                f"{where} is not a readable webKnossos NML file ({reason})"
            ) from None


def _read_nml_into(
    parsed: ParsedLabelFile,
    *,
    data: bytes,
    member: str | None,
    mapping: Mapping[str, str | None],
) -> None:
    where = f"{parsed.filename}: {member}" if member else parsed.filename
    annotation = _load_annotation(data, where=where)
    prefix = f"{member}: " if member else ""
    reader = _NmlReader(mapping=mapping, prefix=prefix)
    reader.read_boxes(annotation)
    reader.read_trees(annotation)
    parsed.records.extend(reader.records)
    parsed.warnings.extend(reader.warnings())
    name = annotation.dataset_name
    if name and parsed.dataset_name is None:
        parsed.dataset_name = name
    size = annotation.voxel_size_with_unit.to_nanometer()
    parsed.voxel_size = (float(size.x), float(size.y), float(size.z))
    if annotation.owner_name and parsed.owner is None:
        parsed.owner = annotation.owner_name


class _NmlReader:
    def __init__(self, *, mapping: Mapping[str, str | None], prefix: str) -> None:
        self.mapping = mapping
        self.prefix = prefix
        self.records: list[LabelRecord] = []
        self._unknown_types: Counter[str] = Counter()
        self._ignored_boxes: list[str] = []
        self._empty_boxes: list[str] = []
        self._unlabelled_outlines: list[str] = []
        self._odd_trees: list[str] = []
        self._ignored_pairs: Counter[str] = Counter()

    # names ----------------------------------------------------------------------------------
    def class_of(self, name: str | None) -> Verdict | None:
        """The verdict a class or type name stands for; ``None`` for anything else."""
        if name is None:
            return None
        text = name.strip()
        key = normalise_name(text)
        if not key:
            return None
        if key in _CLEAN_WORDS:
            return Verdict(LABEL_CLEAN)
        if key in _ARTIFACT_WORDS:
            return Verdict(LABEL_ARTIFACT)
        head, sep, tail = text.partition(":")
        if sep and normalise_name(head) in _ARTIFACT_WORDS:
            tail_key = normalise_name(tail)
            if not tail_key:
                return Verdict(LABEL_ARTIFACT)
            if tail_key in self.mapping:
                return Verdict(LABEL_ARTIFACT, self.mapping[tail_key])
            self._unknown_types[tail.strip()] += 1
            return Verdict(LABEL_ARTIFACT, "other")
        if key in self.mapping:
            return Verdict(LABEL_ARTIFACT, self.mapping[key])
        return None

    def verdicts_from_name(self, name: str, *, tree_ref: str) -> list[Verdict]:
        """``annotator: verdict`` pairs, or a trailing ``:0`` / ``:1`` (see module docs)."""
        found: list[Verdict] = []
        not_verdicts: list[str] = []
        for part in name.split(","):
            key, sep, value = part.partition(":")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value or value.isdigit():
                continue
            key_name = normalise_name(key)
            if key.isdigit() or len(key) > 200 or key_name in _ARTIFACT_WORDS:
                continue  # "artifact:fold" is a class name, not annotator "artifact"
            verdict = self.class_of(value)
            if verdict is None:
                not_verdicts.append(f"'{key}: {value}' ({tree_ref})")
                continue
            found.append(Verdict(verdict.label, verdict.artifact_type, annotator=key))
        if found:
            # Parts beside real verdicts that are no verdict are probably typos.
            self._ignored_pairs.update(not_verdicts)
            return found
        match = _DIGIT_VERDICT.search(name)
        if match:
            return [Verdict(LABEL_ARTIFACT if match.group(1) == "1" else LABEL_CLEAN)]
        return []

    # bounding boxes --------------------------------------------------------------------------
    def read_boxes(self, annotation: wk.Annotation) -> None:
        for index, box in enumerate(annotation.user_bounding_boxes):
            name = box.name or ""
            ref = f"{self.prefix}bounding box {index + 1} '{name}'"
            verdict = self.class_of(name)
            if verdict is None:
                self._ignored_boxes.append(name or f"#{index + 1}")
                continue
            size = tuple(int(v) for v in box.size.to_tuple())
            if any(v <= 0 for v in size):
                self._empty_boxes.append(name)
                continue
            self.records.append(
                LabelRecord(
                    kind=BOX,
                    position=_vec3(box.topleft.to_tuple()),
                    size=_vec3(size),
                    label=verdict.label,
                    artifact_type=verdict.artifact_type,
                    annotator=None,
                    ref=ref,
                )
            )

    # trees ------------------------------------------------------------------------------------
    def read_trees(self, annotation: wk.Annotation) -> None:
        for tree, groups in _walk(annotation.skeleton, ()):
            self._read_tree(tree, groups)

    def _read_tree(self, tree: wk.Tree, groups: tuple[str, ...]) -> None:
        nodes = sorted(tree.nodes, key=lambda n: n.id)
        name = tree.name or ""
        ref = f"{self.prefix}tree {tree.id} '{name}'"
        if not nodes:
            return
        verdicts = self.verdicts_from_name(name, tree_ref=ref)
        if len(nodes) == 1:
            node = nodes[0]
            if not verdicts:
                verdicts = [self._centre_verdict(node.comment, name, groups)]
            for verdict in verdicts:
                self._add(CENTRE, _vec3(node.position.to_tuple()), (0, 0, 0), verdict, ref)
            return
        if not verdicts:
            whole = self.class_of(name)
            if whole is not None:
                verdicts = [whole]
        if not verdicts:
            for group in groups:
                match = _DIGIT_VERDICT.search(group)
                if match:
                    label = LABEL_ARTIFACT if match.group(1) == "1" else LABEL_CLEAN
                    verdicts = [Verdict(label)]
                    break
        if not verdicts:
            self._unlabelled_outlines.append(name or str(tree.id))
            return
        positions = [_vec3(n.position.to_tuple()) for n in nodes]
        zs = {p[2] for p in positions}
        xs = [p[0] for p in positions]
        ys = [p[1] for p in positions]
        width, height = max(xs) - min(xs), max(ys) - min(ys)
        if len(zs) != 1 or width <= 0 or height <= 0:
            self._odd_trees.append(name or str(tree.id))
            return
        for verdict in verdicts:
            self._add(PATCH, (min(xs), min(ys), positions[0][2]), (width, height, 1), verdict, ref)

    def _centre_verdict(self, comment: str | None, name: str, groups: tuple[str, ...]) -> Verdict:
        untyped: Verdict | None = None
        for candidate in (comment, name, *groups):
            verdict = self.class_of(candidate)
            if verdict is None:
                continue
            if verdict.label == LABEL_CLEAN or verdict.artifact_type is not None:
                return verdict
            untyped = untyped or verdict
        if untyped is not None:
            return untyped
        for candidate in (comment, name):
            if candidate and not _PLAIN_NAME.match(candidate):
                self._unknown_types[candidate.strip()] += 1
                return Verdict(LABEL_ARTIFACT, "other")
        return Verdict(LABEL_ARTIFACT)

    def _add(
        self, kind: RecordKind, position: Vec3, size: Vec3, verdict: Verdict, ref: str
    ) -> None:
        self.records.append(
            LabelRecord(
                kind=kind,
                position=position,
                size=size,
                label=verdict.label,
                artifact_type=verdict.artifact_type if verdict.label == LABEL_ARTIFACT else None,
                annotator=verdict.annotator,
                ref=ref,
            )
        )

    def warnings(self) -> list[str]:
        out: list[str] = []
        for name, count in sorted(self._unknown_types.items()):
            out.append(
                f"{self.prefix}unknown artifact type {name!r} ({_plural(count, 'label')}): "
                "imported as 'other'; map the name to a type to change that"
            )
        if self._ignored_boxes:
            boxes = _plural(len(self._ignored_boxes), "bounding box", "bounding boxes")
            out.append(
                f"{self.prefix}ignored {boxes} not named artifact, artifact:<type> or clean: "
                f"{_some(self._ignored_boxes)}"
            )
        if self._empty_boxes:
            boxes = _plural(len(self._empty_boxes), "empty bounding box", "empty bounding boxes")
            out.append(f"{self.prefix}ignored {boxes}: {_some(self._empty_boxes)}")
        if self._unlabelled_outlines:
            trees = _plural(len(self._unlabelled_outlines), "tree")
            out.append(
                f"{self.prefix}skipped {trees} of several nodes without a verdict in the name "
                f"(e.g. 'patch:1', 'AK: clean'): {_some(self._unlabelled_outlines)}"
            )
        if self._odd_trees:
            trees = _plural(len(self._odd_trees), "tree")
            out.append(
                f"{self.prefix}skipped {trees} that outline no patch (nodes must span a "
                f"rectangle in one z plane): {_some(self._odd_trees)}"
            )
        if self._ignored_pairs:
            parts = _plural(len(self._ignored_pairs), "name part")
            verb = "is" if len(self._ignored_pairs) == 1 else "are"
            out.append(
                f"{self.prefix}ignored {parts} that {verb} not a verdict: "
                f"{_some(list(self._ignored_pairs))}"
            )
        return out


def _walk(parent: wk.Group, groups: tuple[str, ...]) -> Iterator[tuple[wk.Tree, tuple[str, ...]]]:
    """Every tree with the names of its groups, innermost first."""
    for tree in sorted(parent.trees, key=lambda t: t.id):
        yield tree, groups
    for group in sorted(parent.groups, key=lambda g: g.id):
        yield from _walk(group, (group.name, *groups))


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
