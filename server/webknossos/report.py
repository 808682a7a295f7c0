"""What one webKnossos sync did: tasks pushed and cancelled, annotations read and imported."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SyncReport:
    pushed: int = 0
    cancelled: int = 0
    annotations_seen: int = 0
    annotations_imported: int = 0
    annotations_unchanged: int = 0
    labels_added: int = 0
    kept_in_progress: int = 0
    unassignable: int = 0
    errors: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pushed": self.pushed,
            "refused": self.refused,
            "unassignable": self.unassignable,
            "cancelled": self.cancelled,
            "kept_in_progress": self.kept_in_progress,
            "warnings": self.warnings,
            "annotations_seen": self.annotations_seen,
            "annotations_imported": self.annotations_imported,
            "annotations_unchanged": self.annotations_unchanged,
            "labels_added": self.labels_added,
            "errors": self.errors,
        }
