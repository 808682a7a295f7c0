"""Stray skeleton clicks in a task's annotation: one-node trees that say nothing.

A task asks the annotator for a bounding box named ``artifact:<type>``, ``artifact`` or
``clean`` over the patch. A one-node tree is a click in the skeleton tool, which webKnossos
saves as a tree of its own (the recorded NmlWriter download of test_bounding_box_roundtrip
holds one, named "a tree"). Imported by the label-file conventions it would become an
``artifact``/``other`` label nobody gave. A one-node tree whose node comment or tree name names
a verdict or a type (``debris``, ``artifact:fold``, ``clean``) is a deliberate mark and stays;
every other one is taken out of the task's annotation before the import and reported.
"""

from __future__ import annotations

from typing import Any

from server.labels.records import build_type_mapping, normalise_name

_VERDICT_WORDS = frozenset({"clean", "noartifact", "artifact", "artefact"})


def _says_something(text: str | None, known: dict[str, str | None]) -> bool:
    if not text:
        return False
    key = normalise_name(text)
    head = key.split(":", 1)[0]
    return key in known or head in _VERDICT_WORDS or head in known


def remove_stray_clicks(annotation: Any) -> list[str]:
    """Take the stray one-node trees out of ``annotation`` (a ``webknossos.Annotation``, in
    place); one description per tree taken out: its name and position."""
    known = build_type_mapping()
    skeleton = annotation.skeleton
    removed: list[str] = []
    for group in [skeleton, *skeleton.flattened_groups()]:
        for tree in list(group.trees):
            if tree.number_of_nodes() != 1:
                continue
            node = next(iter(tree.nodes))
            if _says_something(node.comment, known) or _says_something(tree.name, known):
                continue
            x, y, z = (int(v) for v in node.position)
            removed.append(f"tree {tree.name!r} at ({x}, {y}, {z})")
            group.remove_tree_by_id(tree.id)
    return removed
