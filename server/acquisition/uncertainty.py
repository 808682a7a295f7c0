"""``uncertainty``: the patches the classifier is least sure of."""

from __future__ import annotations

import numpy as np

from models.acquisition import Candidates, Pick, uncertainty_batch
from server.acquisition.base import Strategy
from server.acquisition.candidates import BOUNDARY_AND_RARE


class Uncertainty(Strategy):
    name = "uncertainty"
    summary = "the patches whose p(artifact) is nearest 0.5"
    needs_scores = True
    scoring = BOUNDARY_AND_RARE

    def choose(
        self, candidates: Candidates, *, excluded: np.ndarray, batch_size: int, seed: int
    ) -> list[Pick]:
        return uncertainty_batch(candidates, excluded=excluded, batch_size=batch_size)
