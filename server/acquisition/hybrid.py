"""``hybrid``: uncertainty blended with reconstruction error, kept diverse, a few random."""

from __future__ import annotations

import numpy as np

from models.acquisition import Candidates, Pick, hybrid_batch
from server.acquisition.base import Strategy
from server.acquisition.candidates import BOUNDARY_AND_RARE


class Hybrid(Strategy):
    name = "hybrid"
    summary = (
        "the classifier's uncertainty blended with the autoencoder's reconstruction error, "
        "no near-duplicates in its embedding, a tenth at random"
    )
    needs_scores = True
    scoring = BOUNDARY_AND_RARE

    def choose(
        self, candidates: Candidates, *, excluded: np.ndarray, batch_size: int, seed: int
    ) -> list[Pick]:
        return hybrid_batch(candidates, excluded=excluded, batch_size=batch_size, seed=seed)
