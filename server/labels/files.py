"""Reading label files into plain records; no database here.

Formats: webKnossos annotations (``.nml``, or a ``.zip`` holding NML files) and genEM3
data-source lists (``.json``). Coordinates are mag-1 voxels, as everywhere in webKnossos.

Conventions in NML files:

a. User bounding boxes named by class: ``artifact``, ``artifact:<type>`` (or a bare type
   name) and ``clean``. They become :data:`~server.labels.records.BOX` records; the importer
   turns them into grid patches (overlapping an artifact box -> artifact, inside a clean box
   -> clean). Boxes with other names (``Bounding box 1``) are ignored with a warning.
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
:data:`~server.labels.records.DEFAULT_TYPE_ALIASES` plus the caller's mapping. ``solidShape``
maps to ``debris``: in the genEM3 training data the solid-shape examples are opaque particles
lying on the section, and genEM3 trained all of that file's examples as its "debris" class.

genEM3 data-source JSON (``{"datasource_0": {"input_bbox": [x, y, z, dx, dy, dz],
"target_class": 0 | 1, ...}, ...}``): each entry is a patch, one label per z slice;
``target_class`` 1 is artifact (untyped: genEM3's class mixes all kinds), 0 is clean.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from models.vocab import LABEL_ARTIFACT, LABEL_CLEAN
from server.errors import InvalidInput
from server.labels import nml
from server.labels.records import (
    PATCH,
    LabelRecord,
    ParsedLabelFile,
    ZipLimits,
    build_type_mapping,
    finish,
    some,
)


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
    if kind == "zip":
        return nml.parse_zip(filename, data, mapping, limits=zip_limits or ZipLimits())
    parsed = ParsedLabelFile(filename=filename, format="nml")
    nml.read_nml_into(parsed, data=data, member=None, mapping=mapping)
    finish(parsed)
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
                f"the data sources point at {len(names)} datasets ({some(list(names))}); "
                "all were imported into one"
            )
    finish(parsed)
    return parsed


def _dataset_of_wkw_path(path: str) -> str | None:
    """``.../<dataset>/<layer>/<mag>`` -> ``<dataset>``."""
    parts = [p for p in PurePosixPath(path).parts if p not in ("/", "")]
    return parts[-3] if len(parts) >= 3 else None
