"""Shared vocabulary of verdicts and artifact types.

Lives in ``models`` because both the science code and the service need it and
``models`` may not import ``server``.
"""

from __future__ import annotations

from typing import Final

LABEL_CLEAN: Final = "clean"
LABEL_ARTIFACT: Final = "artifact"
LABEL_CLASSES: Final = (LABEL_CLEAN, LABEL_ARTIFACT)

# Order matters: the position + 1 is the id written into ``artifact_mask`` layers (0 = none).
ARTIFACT_TYPES: Final = (
    "circular",
    "horseshoe",
    "scratch",
    "debris",
    "fold",
    "missing",
    "contrast",
    "defocus",
    "other",
)


def artifact_type_id(name: str) -> int:
    """Segmentation id of an artifact type (1-based; 0 means no artifact)."""
    return ARTIFACT_TYPES.index(name) + 1


def artifact_type_name(type_id: int) -> str | None:
    """Inverse of :func:`artifact_type_id`; ``None`` for 0."""
    if type_id == 0:
        return None
    return ARTIFACT_TYPES[type_id - 1]
