"""The candidates a strategy gathers, bounded whatever the size of the grid.

- :class:`ScoringPolicy`: which unlabelled patches a classifier version scores for a strategy
  that needs scores (the score step asks the strategy, never decides itself).
- :func:`scored`, :func:`from_features`, :func:`sampled`: what a proposal chooses among: the
  classifier's scored candidates, the autoencoder's features of a bounded set, or a uniform
  sample of the grid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from models.acquisition import Candidates, Pick
from server.acquisition.relabel import Suspect

# bounds of what a proposal step holds in memory, whatever the size of the grid
RESERVOIR = 50_000  # patches sampled uniformly (typical patches, random picks)
TOP_PER_BATCH = 40  # most anomalous patches kept per proposal asked for


class FeatureStore(Protocol):
    """An autoencoder version's features of every grid patch (recon error, embedding)."""

    def complete(self) -> bool: ...

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def stream(
        self, *, embedding: bool = True
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]: ...


class NotScored(LookupError):
    """A strategy that needs the classifier's scores found none."""


@dataclass(frozen=True)
class Pool:
    """What a proposal step knows of the grid's patches."""

    n_patches: int
    excluded: np.ndarray  # audit set, labelled, leased: never proposed
    features: FeatureStore  # the autoencoder's
    scores: Mapping[str, np.ndarray] | None = None  # the classifier's scores of its candidates
    # suspect labels that may be offered for a second look, competing with new patches
    relabels: tuple[Suspect, ...] = ()


@dataclass(frozen=True)
class Gathered:
    """Candidates and, row for row, the score components a proposal records."""

    candidates: Candidates
    components: dict[str, np.ndarray] = field(default_factory=dict)

    def describe(self, picks: list[Pick]) -> list[dict[str, Any]]:
        """Picks as dicts of ``index``, ``reason``, ``score`` and each score component."""
        where = {int(i): n for n, i in enumerate(self.candidates.indices)}
        return [
            {
                "index": p.index,
                "reason": p.reason,
                "score": p.score,
                **{k: float(v[where[p.index]]) for k, v in self.components.items()},
            }
            for p in picks
        ]


def scored(pool: Pool) -> Gathered:
    """The classifier's scored candidates, with the autoencoder's features of each."""
    if pool.scores is None or "index" not in pool.scores:
        raise NotScored("this version has no scores of its candidates: score it first")
    scores = pool.scores
    idx = scores["index"]
    if "recon_error" in scores:  # computed beside the scores when the features were missing
        recon, embed = scores["recon_error"], scores["embedding"]
    else:
        recon, embed = pool.features.take(idx)
    return Gathered(
        Candidates(idx, p_artifact=scores["p_artifact"], recon_error=recon, embedding=embed),
        {
            "p_artifact": scores["p_artifact"],
            "uncertainty": scores["uncertainty"],
            "recon_error": recon,
        },
    )


def from_features(pool: Pool, *, batch_size: int, seed: int) -> Gathered:
    """The autoencoder's features of a bounded set: a uniform sample plus the most anomalous."""
    idx, recon, embed = bounded_features(
        pool.features, excluded=pool.excluded, top=TOP_PER_BATCH * batch_size, seed=seed
    )
    return Gathered(Candidates(idx, recon_error=recon, embedding=embed), {"recon_error": recon})


def sampled(pool: Pool, *, seed: int) -> Gathered:
    """The grid's indices, or on a large grid a uniform sample of them (never the whole range)."""
    n = pool.n_patches
    indices = (
        np.arange(n, dtype=np.int64)
        if n <= RESERVOIR
        else np.unique(np.random.default_rng(seed).choice(n, size=RESERVOIR, replace=False))
    )
    return Gathered(Candidates(indices))


def bounded_features(
    features: FeatureStore, *, excluded: np.ndarray, top: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The autoencoder's features of a bounded set of patches, read chunk by chunk:
    a uniform sample of at most :data:`RESERVOIR` patches (for typical ones) plus the ``top``
    most anomalous allowed ones. Memory does not grow with the grid; on grids of up to
    :data:`RESERVOIR` patches every allowed patch is kept. Sorted by grid index."""
    rng = np.random.default_rng(seed)
    sample = _Kept.empty()  # the reservoir: random keys, the smallest win
    anomalous = _Kept.empty()  # the highest reconstruction errors
    for idx, recon, embed in features.stream():
        chunk = _Kept(idx, recon, embed, rng.random(len(idx)))
        # the selector drops excluded patches itself; the sample keeps them so that a
        # small grid is passed on whole, exactly as it is
        sample = sample.join(chunk).smallest(RESERVOIR, by=lambda k: k.key)
        ok = ~np.isin(idx, excluded)
        chunk = _Kept(idx[ok], recon[ok], embed[ok], chunk.key[ok])
        anomalous = anomalous.join(chunk).smallest(
            top, by=lambda k: -np.nan_to_num(k.recon, nan=-np.inf)
        )
    both = sample.join(anomalous)
    if both.idx.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32), np.empty((0, 0), np.float16)
    idx, first = np.unique(both.idx, return_index=True)
    return idx, both.recon[first], both.embed[first]


@dataclass
class _Kept:
    idx: np.ndarray
    recon: np.ndarray
    embed: np.ndarray
    key: np.ndarray

    @classmethod
    def empty(cls) -> _Kept:
        return cls(np.empty(0, np.int64), np.empty(0, np.float32), np.empty((0, 0)), np.empty(0))

    def join(self, other: _Kept) -> _Kept:
        if self.idx.size == 0:
            return other
        return _Kept(
            *(
                np.concatenate([getattr(self, f), getattr(other, f)])
                for f in ("idx", "recon", "embed", "key")
            )
        )

    def smallest(self, n: int, *, by: Any) -> _Kept:
        if self.idx.size <= n:
            return self
        keep = np.argpartition(by(self), n)[:n]
        return _Kept(self.idx[keep], self.recon[keep], self.embed[keep], self.key[keep])


@dataclass(frozen=True)
class ScoringPolicy:
    """Which unlabelled patches a classifier version scores when the pool is larger than
    ``ARTIFACT_LOOP_CANDIDATES``: shares of that limit, a fresh random sample for the rest."""

    previous_uncertain: float = 0.0  # the previous classifier's most uncertain candidates
    anomalous: float = 0.0  # the autoencoder's highest reconstruction errors
    # the nearest unlabelled neighbours (autoencoder embedding, cosine) of the patches labelled
    # artifact, an equal number for each of the latest ``neighbour_queries`` such labels
    neighbours: float = 0.0
    neighbour_queries: int = 256


# a uniform random sample of the pool
UNIFORM = ScoringPolicy()
# where the next labels pay most: near the last decision boundary, where the autoencoder is
# surprised, and beside the few artifacts found so far, which a random sample mostly misses
BOUNDARY_AND_RARE = ScoringPolicy(previous_uncertain=0.2, anomalous=0.1, neighbours=0.2)


@dataclass(frozen=True)
class ScoringInputs:
    """What the score step knows when it asks a strategy for its candidates; the costly
    parts are callables, asked only when the pool is larger than ``limit``."""

    n_patches: int
    excluded: np.ndarray
    limit: int  # ARTIFACT_LOOP_CANDIDATES (0: every unlabelled patch)
    seed: tuple[int, ...]
    features: FeatureStore | None  # the autoencoder's, when computed
    previous_scores: Callable[[], Mapping[str, np.ndarray] | None]  # the last classifier's
    labelled_artifacts: Callable[[int], np.ndarray]  # grid indices of the latest k artifacts


def scoring_candidates(policy: ScoringPolicy, inputs: ScoringInputs) -> np.ndarray:
    """Grid indices a classifier version scores, sorted: the whole unlabelled pool outside
    ``excluded`` when it fits the limit, else a mix of at most that many. No step of it holds
    the whole index range of the grid."""
    n, limit = inputs.n_patches, inputs.limit
    excluded = np.unique(np.asarray(inputs.excluded, dtype=np.int64))
    if not limit or n - len(excluded) <= limit:
        return np.setdiff1d(np.arange(n, dtype=np.int64), excluded, assume_unique=True)
    k_near = int(limit * policy.neighbours)
    queries = (
        inputs.labelled_artifacts(policy.neighbour_queries) if k_near else np.empty(0, np.int64)
    )
    anomalous, near = _from_features(
        inputs.features,
        k_anomalous=int(limit * policy.anomalous),
        queries=queries,
        k_near=k_near,
        excluded=excluded,
    )
    k_previous = int(limit * policy.previous_uncertain)
    chosen = [
        _most_uncertain(
            inputs.previous_scores() if k_previous else None, k=k_previous, excluded=excluded
        ),
        anomalous,
        near,
    ]
    taken = np.unique(np.concatenate(chosen))
    rng = np.random.default_rng(list(inputs.seed))
    need = limit - len(taken)
    draw = min(n, need + len(excluded) + len(taken))  # enough that ``need`` survive
    fresh = rng.choice(n, size=draw, replace=False)  # Floyd's sampling: O(draw) memory
    fresh = fresh[~np.isin(fresh, excluded) & ~np.isin(fresh, taken)][:need]
    return np.sort(np.concatenate([taken, fresh]))


def _most_uncertain(
    scores: Mapping[str, np.ndarray] | None, *, k: int, excluded: np.ndarray
) -> np.ndarray:
    """The ``k`` candidates of a previous round nearest p = 0.5, still unlabelled."""
    if scores is None or k <= 0 or "index" not in scores:
        return np.empty(0, np.int64)
    keep = ~np.isin(scores["index"], excluded)
    idx, margin = scores["index"][keep], np.nan_to_num(scores["uncertainty"][keep], nan=-1.0)
    if len(idx) > k:
        idx = idx[np.argpartition(-margin, k)[:k]]
    return idx.astype(np.int64)


def _from_features(
    features: FeatureStore | None,
    *,
    k_anomalous: int,
    queries: np.ndarray,
    k_near: int,
    excluded: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """In one pass over the autoencoder's features, chunk by chunk: the ``k_anomalous``
    unlabelled patches it reconstructs worst, and the ``k_near // len(queries)`` unlabelled
    patches nearest each query patch in its embedding (cosine similarity)."""
    empty = np.empty(0, np.int64)
    if features is None or not features.complete():
        return empty, empty
    each = k_near // len(queries) if len(queries) else 0
    query = _unit(features.take(queries)[1]) if each else np.empty((0, 0), np.float32)
    best_idx, best_err = empty, np.empty(0, np.float32)
    near_idx = np.empty((len(query), 0), np.int64)
    near_sim = np.empty((len(query), 0), np.float32)
    for idx, recon, embed in features.stream(embedding=each > 0):
        keep = ~np.isin(idx, excluded)
        idx = idx[keep]
        if k_anomalous > 0:
            best_idx = np.concatenate([best_idx, idx])
            best_err = np.concatenate([best_err, np.nan_to_num(recon[keep], nan=-np.inf)])
            if len(best_idx) > k_anomalous:
                top = np.argpartition(-best_err, k_anomalous)[:k_anomalous]
                best_idx, best_err = best_idx[top], best_err[top]
        if each:
            sim = query @ _unit(embed[keep]).T  # (queries, patches of the chunk)
            near_idx = np.concatenate([near_idx, np.broadcast_to(idx, sim.shape)], axis=1)
            near_sim = np.concatenate([near_sim, sim], axis=1)
            if near_idx.shape[1] > each:
                top = np.argpartition(-near_sim, each - 1, axis=1)[:, :each]
                near_idx = np.take_along_axis(near_idx, top, axis=1)
                near_sim = np.take_along_axis(near_sim, top, axis=1)
    return best_idx, np.unique(near_idx)


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.nan_to_num(np.asarray(vectors, dtype=np.float32))
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)
