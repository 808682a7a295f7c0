"""XML label files read within bounds: one streaming pass (expat, no tree kept) counts the
elements before any library builds the whole document in memory, so a small zip of dense
XML is refused in moments instead of taking minutes and gigabytes."""

from __future__ import annotations

from typing import Final
from xml.parsers import expat

from server.errors import InvalidInput

# A webKnossos annotation of labels has a node or a box per label: tens of thousands at most.
MAX_NML_NODES: Final = 100_000
# every element: nodes, edges, comments, branch points, groups, bounding boxes, ...
MAX_NML_ELEMENTS: Final = 500_000


class _OverBound(Exception):
    pass


def check_nml_bounds(data: bytes, *, where: str) -> None:
    """Raise :class:`InvalidInput` (naming ``where``) when ``data`` is not well-formed XML,
    declares a DOCTYPE or entities (NML files never do; entities can multiply what is read),
    or holds more than :data:`MAX_NML_NODES` nodes or :data:`MAX_NML_ELEMENTS` elements."""
    counts = {"elements": 0, "nodes": 0}

    def start(name: str, _attributes: object) -> None:
        counts["elements"] += 1
        if name == "node":
            counts["nodes"] += 1
            if counts["nodes"] > MAX_NML_NODES:
                raise _OverBound(f"more than {MAX_NML_NODES:,} nodes")
        if counts["elements"] > MAX_NML_ELEMENTS:
            raise _OverBound(f"more than {MAX_NML_ELEMENTS:,} XML elements")

    def declaration(*_args: object) -> None:
        raise _OverBound("a DOCTYPE or entity declaration, which NML files never have")

    parser = expat.ParserCreate()
    parser.StartElementHandler = start
    parser.StartDoctypeDeclHandler = declaration
    parser.EntityDeclHandler = declaration
    try:
        parser.Parse(data, True)
    except _OverBound as exc:
        raise InvalidInput(f"{where} holds {exc}; split it into smaller files") from None
    except expat.ExpatError as exc:
        raise InvalidInput(f"{where} is not valid XML ({exc})") from None
