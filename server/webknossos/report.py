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
    strays: list[str] = field(default_factory=list)  # one-node trees left out of task imports
    delete_refused: list[str] = field(default_factory=list)  # tasks the server kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "pushed": self.pushed,
            "refused": self.refused,
            "unassignable": self.unassignable,
            "cancelled": self.cancelled,
            "kept_in_progress": self.kept_in_progress,
            "warnings": self.warnings,
            "delete_refused": self.delete_refused,
            "strays": self.strays,
            "annotations_seen": self.annotations_seen,
            "annotations_imported": self.annotations_imported,
            "annotations_unchanged": self.annotations_unchanged,
            "labels_added": self.labels_added,
            "errors": self.errors,
        }
