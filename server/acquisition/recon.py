"""``recon``: the patches the autoencoder reconstructs worst; needs no classifier scores."""

from __future__ import annotations

import numpy as np

from models.acquisition import Candidates, Pick, recon_batch
from server.acquisition.base import Strategy


class Recon(Strategy):
    name = "recon"
    summary = "the patches with the highest reconstruction error (anomalies)"

    def choose(
        self, candidates: Candidates, *, excluded: np.ndarray, batch_size: int, seed: int
    ) -> list[Pick]:
        return recon_batch(candidates, excluded=excluded, batch_size=batch_size)
