"""Acquisition: which unlabelled patches to label next. Pure functions of scores.

Every selector has one signature, :data:`Selector`: the :class:`Candidates` (grid indices with
whatever scores are known of them), an ``excluded`` array (audit set, labelled, leased), the
batch size and a seed; it returns a ranked batch of :class:`Pick`. The audit set is drawn
uniformly at random once (:func:`draw_audit_set`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pick:
    index: int
    reason: str  # uncertain, anomalous, diverse, typical, random
    score: float


@dataclass(frozen=True)
class Candidates:
    """Patches a selector may choose from: grid indices and, row for row, what is known of
    them (the classifier's p(artifact), the autoencoder's reconstruction error and embedding)."""

    indices: np.ndarray
    p_artifact: np.ndarray | None = None
    recon_error: np.ndarray | None = None
    embedding: np.ndarray | None = None

    def need(self, *names: str) -> tuple[np.ndarray, ...]:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"this selector needs {', '.join(missing)} of its candidates")
        return tuple(np.asarray(getattr(self, n)) for n in names)


# the one interface of a selector: (candidates, *, excluded, batch_size, seed) -> ranked picks
Selector = Callable[..., list[Pick]]


def margin_uncertainty(p_artifact: np.ndarray) -> np.ndarray:
    """1 at p = 0.5, 0 at p = 0 or 1: how unsure the classifier is of each patch."""
    return 1 - np.abs(2 * np.asarray(p_artifact) - 1)


def draw_audit_set(n_total: int, size: int, *, seed: int) -> np.ndarray:
    """A uniformly random sample of grid indices, sorted."""
    size = int(min(max(size, 0), n_total))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=size, replace=False)).astype(np.int64)


def _allowed(indices: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    return ~np.isin(indices, excluded)


def random_batch(
    candidates: Candidates, *, excluded: np.ndarray, batch_size: int, seed: int
) -> list[Pick]:
    indices = candidates.indices
    pool = indices[_allowed(indices, excluded)]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(pool, size=min(batch_size, pool.size), replace=False)
    return [Pick(int(i), "random", 0.0) for i in chosen]


def top_k(
    indices: np.ndarray, scores: np.ndarray, *, excluded: np.ndarray, k: int, reason: str
) -> list[Pick]:
    ok = _allowed(indices, excluded) & np.isfinite(scores)
    idx, sc = indices[ok], scores[ok]
    order = np.argsort(-sc, kind="stable")[:k]
    return [Pick(int(idx[o]), reason, float(sc[o])) for o in order]


def uncertainty_batch(
    candidates: Candidates, *, excluded: np.ndarray, batch_size: int, seed: int = 0
) -> list[Pick]:
    """The patches the classifier is least sure of."""
    (p,) = candidates.need("p_artifact")
    return top_k(
        candidates.indices,
        margin_uncertainty(p),
        excluded=excluded,
        k=batch_size,
        reason="uncertain",
    )


def recon_batch(
    candidates: Candidates, *, excluded: np.ndarray, batch_size: int, seed: int = 0
) -> list[Pick]:
    """The patches the autoencoder reconstructs worst."""
    (recon,) = candidates.need("recon_error")
    return top_k(candidates.indices, recon, excluded=excluded, k=batch_size, reason="anomalous")


def k_center_greedy(embedding: np.ndarray, k: int, *, first: int = 0) -> np.ndarray:
    """Positions of ``k`` rows chosen so each is as far as possible from those before it."""
    x = np.asarray(embedding, dtype=np.float32)
    if len(x) == 0 or k <= 0:
        return np.empty(0, dtype=np.int64)
    chosen = [first]
    dist = np.linalg.norm(x - x[first], axis=1)
    while len(chosen) < min(k, len(x)):
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0:
            break  # only duplicates left
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
    return np.asarray(chosen, dtype=np.int64)


def diverse_in_order(
    embedding: np.ndarray, order: np.ndarray, k: int, *, min_distance: float | None = None
) -> np.ndarray:
    """Walk ``order`` (best first) and keep a row unless it lies within ``min_distance`` of
    one already kept: the best-scored patches, without near-duplicates."""
    x = np.asarray(embedding, dtype=np.float32)
    if min_distance is None:
        min_distance = 0.05 * typical_distance(x)
    kept: list[int] = []
    for pos in order:
        if len(kept) >= k:
            break
        if kept and np.min(np.linalg.norm(x[kept] - x[pos], axis=1)) < min_distance:
            continue
        kept.append(int(pos))
    return np.asarray(kept, dtype=np.int64)


def typical_distance(x: np.ndarray, *, sample: int = 200, seed: int = 0) -> float:
    """Median distance between random pairs of rows."""
    if len(x) < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    a = x[rng.integers(len(x), size=sample)]
    b = x[rng.integers(len(x), size=sample)]
    return float(np.median(np.linalg.norm(a - b, axis=1)))


def hybrid_batch(
    candidates: Candidates,
    *,
    excluded: np.ndarray,
    batch_size: int,
    seed: int,
    recon_weight: float = 0.3,
    random_fraction: float = 0.1,
) -> list[Pick]:
    """Uncertainty blended with reconstruction error, kept diverse in embedding space (no
    near-duplicates of a pick already made), plus a few random picks."""
    p_artifact, recon_error, embedding = candidates.need("p_artifact", "recon_error", "embedding")
    indices = candidates.indices
    ok = _allowed(indices, excluded) & np.isfinite(p_artifact)
    idx, p = indices[ok], p_artifact[ok]
    emb = embedding[ok]
    uncertainty = margin_uncertainty(p)
    recon = np.nan_to_num(recon_error[ok], nan=0.0)
    anomaly = 1 / (1 + np.exp(-(recon - 3) / 1.5))  # robust z of 3 -> 0.5
    score = (1 - recon_weight) * uncertainty + recon_weight * anomaly
    n_random = round(batch_size * random_fraction)
    n_diverse = batch_size - n_random
    # the best-scored patches, skipping near-duplicates of those already taken; the candidate
    # window grows only as far as it must
    order = np.argsort(-score, kind="stable")
    chosen = diverse_in_order(emb, order, n_diverse, min_distance=0.05 * typical_distance(emb))
    picks = [
        Pick(
            int(idx[c]),
            "anomalous"
            if anomaly[c] * recon_weight > uncertainty[c] * (1 - recon_weight)
            else "uncertain",
            float(score[c]),
        )
        for c in chosen
    ]
    taken = np.concatenate([excluded, np.asarray([pk.index for pk in picks], dtype=np.int64)])
    picks += random_batch(Candidates(indices), excluded=taken, batch_size=n_random, seed=seed)
    return picks[:batch_size]


def kmeans(
    x: np.ndarray, k: int, *, seed: int, iterations: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Plain k-means (k-means++ start): centres and the assignment of each row."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float32)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = np.min([np.sum((x - c) ** 2, axis=1) for c in centres], axis=0)
        total = d.sum()
        centres.append(x[rng.choice(len(x), p=d / total)] if total > 0 else x[rng.integers(len(x))])
    c = np.stack(centres)
    assign = np.zeros(len(x), dtype=np.int64)
    for _ in range(iterations):
        d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
        assign = d.argmin(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    return c, assign


def cold_start_batch(
    candidates: Candidates,
    *,
    excluded: np.ndarray,
    batch_size: int,
    seed: int,
    anomalous_fraction: float = 0.5,
    max_points: int = 20_000,
) -> list[Pick]:
    """No labels yet: typical patches (the ones nearest the k-means centres of the
    embedding) plus the most anomalous (highest reconstruction error), kept diverse."""
    recon_error, embedding = candidates.need("recon_error", "embedding")
    indices = candidates.indices
    ok = _allowed(indices, excluded)
    idx = indices[ok]
    emb = embedding.astype(np.float32)[ok]
    recon = np.nan_to_num(recon_error[ok], nan=-np.inf)
    if idx.size == 0:
        return []
    n_anom = round(batch_size * anomalous_fraction)
    n_typical = batch_size - n_anom
    rng = np.random.default_rng(seed)
    sample = rng.choice(idx.size, size=min(idx.size, max_points), replace=False)
    picks: list[Pick] = []
    used: set[int] = set()
    if n_typical:
        centres, _ = kmeans(emb[sample], min(n_typical, sample.size), seed=seed)
        for c in centres:
            d = ((emb[sample] - c) ** 2).sum(1)
            for pos in np.argsort(d):
                i = int(sample[pos])
                if i not in used:
                    used.add(i)
                    picks.append(Pick(int(idx[i]), "typical", float(-d[pos])))
                    break
    order = np.asarray(
        [t for t in np.argsort(-recon, kind="stable") if int(t) not in used], dtype=np.int64
    )
    for pos in diverse_in_order(emb, order, n_anom):
        picks.append(Pick(int(idx[pos]), "anomalous", float(recon[pos])))
    return picks[:batch_size]
