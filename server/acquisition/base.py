"""The interface every acquisition strategy implements: its name, whether it needs the
classifier's scores, which candidates the classifier scores for it, what it gathers and how it
chooses a batch, with a classifier and before there is one (the cold start)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from models.acquisition import Candidates, Pick, cold_start_batch
from server.acquisition.candidates import (
    UNIFORM,
    Gathered,
    Pool,
    ScoringInputs,
    ScoringPolicy,
    from_features,
    scored,
    scoring_candidates,
)
from server.acquisition.relabel import mix_relabels


class Strategy(ABC):
    """One way to choose the next batch. A subclass sets the class attributes and
    :meth:`choose`; the rest has defaults that fit most strategies."""

    name: ClassVar[str]  # what settings, job parameters, the CLI and benchmarks call it
    summary: ClassVar[str]  # one line for the docs
    needs_scores: ClassVar[bool] = False  # must a classifier score candidates before it proposes
    scoring: ClassVar[ScoringPolicy] = UNIFORM  # which candidates a classifier scores for it
    cold_start: ClassVar[str] = "cold start"  # what proposes while only an autoencoder exists
    cold_start_summary: ClassVar[str] = (
        "typical patches (k-means centres of the embedding) and the most anomalous"
    )

    @abstractmethod
    def choose(
        self, candidates: Candidates, *, excluded: np.ndarray, batch_size: int, seed: int
    ) -> list[Pick]:
        """A ranked batch of the candidates, none of them ``excluded``."""

    def gather(self, pool: Pool, *, batch_size: int, seed: int) -> Gathered:
        """The candidates it chooses among once a classifier exists."""
        if self.needs_scores:
            return scored(pool)
        return from_features(pool, batch_size=batch_size, seed=seed)

    def gather_cold(self, pool: Pool, *, batch_size: int, seed: int) -> Gathered:
        """The candidates it chooses among while only an autoencoder exists."""
        return from_features(pool, batch_size=batch_size, seed=seed)

    def choose_cold(
        self, candidates: Candidates, *, excluded: np.ndarray, batch_size: int, seed: int
    ) -> list[Pick]:
        """No classifier yet: typical patches of the embedding plus the most anomalous."""
        return cold_start_batch(candidates, excluded=excluded, batch_size=batch_size, seed=seed)

    def candidate_set(self, inputs: ScoringInputs) -> np.ndarray:
        """Grid indices a classifier version scores for this strategy."""
        return scoring_candidates(self.scoring, inputs)

    def propose(
        self, pool: Pool, *, batch_size: int, seed: int, classifier: bool
    ) -> list[dict[str, Any]]:
        """The next batch as dicts of ``index``, ``reason``, ``score`` and score components;
        ``classifier``: whether the version proposing is a classifier (else the cold start).
        Suspect labels of the pool compete for places in it (:mod:`.relabel`): a re-label pick
        has ``reason`` "relabel" and the label's position under ``relabel``."""
        gather, choose = (
            (self.gather, self.choose) if classifier else (self.gather_cold, self.choose_cold)
        )
        gathered = gather(pool, batch_size=batch_size, seed=seed)
        picks = choose(
            gathered.candidates, excluded=pool.excluded, batch_size=batch_size, seed=seed
        )
        return mix_relabels(gathered.describe(picks), pool.relabels, batch_size=batch_size)

    def described_as(self, *, classifier: bool) -> str:
        """How a proposal step reports what chose its batch."""
        return self.name if classifier else self.cold_start
