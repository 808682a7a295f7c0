"""A strategy written as a newcomer would add one: this module plus one registry row."""

from __future__ import annotations

import numpy as np

from models.acquisition import Candidates, Pick, top_k
from server.acquisition.base import Strategy
from server.acquisition.candidates import BOUNDARY_AND_RARE

CALLS: list[int] = []  # batch sizes asked of it, so a test sees it ran


class MostLikelyArtifact(Strategy):
    name = "toy-most-likely"
    summary = "the patches the classifier finds most likely to be artifacts"
    needs_scores = True
    scoring = BOUNDARY_AND_RARE

    def choose(
        self, candidates: Candidates, *, excluded: np.ndarray, batch_size: int, seed: int
    ) -> list[Pick]:
        CALLS.append(batch_size)
        (p,) = candidates.need("p_artifact")
        return top_k(candidates.indices, p, excluded=excluded, k=batch_size, reason="likely")
