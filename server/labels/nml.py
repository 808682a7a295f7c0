"""webKnossos annotations: NML files, alone or in a zip, read into label records.

The conventions they follow are described in :mod:`server.labels.files`.
"""

from __future__ import annotations

import io
import tempfile
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from xml.etree.ElementTree import ParseError

from models.vocab import LABEL_ARTIFACT, LABEL_CLEAN
from server.errors import InvalidInput
from server.labels.bounded_xml import check_nml_bounds
from server.labels.records import (
    ARTIFACT_WORDS,
    BOX,
    CENTRE,
    CLEAN_WORDS,
    DIGIT_VERDICT,
    MAX_NML_BYTES,
    PATCH,
    PLAIN_NAME,
    LabelRecord,
    ParsedLabelFile,
    RecordKind,
    Vec3,
    Verdict,
    ZipLimits,
    finish,
    format_voxel,
    normalise_name,
    plural,
    some,
    vec3,
)
from server.wklib import wk

if TYPE_CHECKING:
    from server.wklib import wk


# -- webKnossos annotations ----------------------------------------------------------------------
def parse_zip(
    filename: str, data: bytes, mapping: Mapping[str, str | None], *, limits: ZipLimits
) -> ParsedLabelFile:
    """The NML files of a zip, together at most ``limits`` (checked on the sizes the zip
    declares, and again on the bytes actually inflated: a zip can lie about its sizes)."""
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
        if len(members) > limits.members:
            raise InvalidInput(
                f"{filename} holds {len(members):,} NML files, more than the "
                f"{limits.members:,} a zip may hold"
            )
        declared = sum(info.file_size for info in members)
        if declared > limits.inflated_bytes:
            raise InvalidInput(
                f"{filename} unpacks to {declared:,} bytes, more than the "
                f"{limits.inflated_bytes:,} a zip may hold in all"
            )
        budget = limits.inflated_bytes
        parsed = ParsedLabelFile(filename=filename, format="zip")
        voxel_sizes: set[tuple[float, float, float]] = set()
        for info in members:
            if info.file_size > MAX_NML_BYTES:
                raise InvalidInput(
                    f"{filename}: {info.filename} is {info.file_size:,} bytes unpacked, "
                    f"more than the {MAX_NML_BYTES:,} an NML may have"
                )
            try:
                content = _inflate(archive, info, at_most=min(budget, MAX_NML_BYTES))
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise InvalidInput(f"{filename}: cannot unpack {info.filename}: {exc}") from None
            if content is None:
                raise InvalidInput(
                    f"{filename}: unpacking {info.filename} went past the "
                    f"{limits.inflated_bytes:,} bytes a zip may hold in all"
                )
            budget -= len(content)
            read_nml_into(
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
                f"({'; '.join(format_voxel(v) for v in sorted(voxel_sizes))})"
            )
    finish(parsed)
    return parsed


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo, *, at_most: int) -> bytes | None:
    """The member's bytes, or ``None`` as soon as they grow past ``at_most``."""
    out = io.BytesIO()
    with archive.open(info) as member:
        while chunk := member.read(1024 * 1024):
            if out.tell() + len(chunk) > at_most:
                return None
            out.write(chunk)
    return out.getvalue()


def _load_annotation(data: bytes, *, where: str) -> wk.Annotation:
    check_nml_bounds(data, where=where)  # before the library builds it all in memory
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


def read_nml_into(
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
        if key in CLEAN_WORDS:
            return Verdict(LABEL_CLEAN)
        if key in ARTIFACT_WORDS:
            return Verdict(LABEL_ARTIFACT)
        head, sep, tail = text.partition(":")
        if sep and normalise_name(head) in ARTIFACT_WORDS:
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
            if key.isdigit() or len(key) > 200 or key_name in ARTIFACT_WORDS:
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
        match = DIGIT_VERDICT.search(name)
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
                    position=vec3(box.topleft.to_tuple()),
                    size=vec3(size),
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
                self._add(CENTRE, vec3(node.position.to_tuple()), (0, 0, 0), verdict, ref)
            return
        if not verdicts:
            whole = self.class_of(name)
            if whole is not None:
                verdicts = [whole]
        if not verdicts:
            for group in groups:
                match = DIGIT_VERDICT.search(group)
                if match:
                    label = LABEL_ARTIFACT if match.group(1) == "1" else LABEL_CLEAN
                    verdicts = [Verdict(label)]
                    break
        if not verdicts:
            self._unlabelled_outlines.append(name or str(tree.id))
            return
        positions = [vec3(n.position.to_tuple()) for n in nodes]
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
            if candidate and not PLAIN_NAME.match(candidate):
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
                f"{self.prefix}unknown artifact type {name!r} ({plural(count, 'label')}): "
                "imported as 'other'; map the name to a type to change that"
            )
        if self._ignored_boxes:
            boxes = plural(len(self._ignored_boxes), "bounding box", "bounding boxes")
            out.append(
                f"{self.prefix}ignored {boxes} not named artifact, artifact:<type> or clean: "
                f"{some(self._ignored_boxes)}"
            )
        if self._empty_boxes:
            boxes = plural(len(self._empty_boxes), "empty bounding box", "empty bounding boxes")
            out.append(f"{self.prefix}ignored {boxes}: {some(self._empty_boxes)}")
        if self._unlabelled_outlines:
            trees = plural(len(self._unlabelled_outlines), "tree")
            out.append(
                f"{self.prefix}skipped {trees} of several nodes without a verdict in the name "
                f"(e.g. 'patch:1', 'AK: clean'): {some(self._unlabelled_outlines)}"
            )
        if self._odd_trees:
            trees = plural(len(self._odd_trees), "tree")
            out.append(
                f"{self.prefix}skipped {trees} that outline no patch (nodes must span a "
                f"rectangle in one z plane): {some(self._odd_trees)}"
            )
        if self._ignored_pairs:
            parts = plural(len(self._ignored_pairs), "name part")
            verb = "is" if len(self._ignored_pairs) == 1 else "are"
            out.append(
                f"{self.prefix}ignored {parts} that {verb} not a verdict: "
                f"{some(list(self._ignored_pairs))}"
            )
        return out


def _walk(parent: wk.Group, groups: tuple[str, ...]) -> Iterator[tuple[wk.Tree, tuple[str, ...]]]:
    """Every tree with the names of its groups, innermost first."""
    for tree in sorted(parent.trees, key=lambda t: t.id):
        yield tree, groups
    for group in sorted(parent.groups, key=lambda g: g.id):
        yield from _walk(group, (group.name, *groups))
