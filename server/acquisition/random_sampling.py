"""``random``: a uniform sample of the unlabelled pool, the baseline every strategy must beat."""

from __future__ import annotations

import numpy as np

from models.acquisition import Candidates, Pick, random_batch
from server.acquisition.base import Strategy
from server.acquisition.candidates import Gathered, Pool, sampled


class RandomSampling(Strategy):
    name = "random"
    summary = "a uniform random sample of the pool, with and without a classifier"
    cold_start = "random"
    cold_start_summary = "random"

    def gather(self, pool: Pool, *, batch_size: int, seed: int) -> Gathered:
        return sampled(pool, seed=seed)

    def choose(
        self, candidates: Candidates, *, excluded: np.ndarray, batch_size: int, seed: int
    ) -> list[Pick]:
        return random_batch(candidates, excluded=excluded, batch_size=batch_size, seed=seed)

    gather_cold = gather
    choose_cold = choose
