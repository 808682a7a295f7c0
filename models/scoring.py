"""Scoring a stream of patch batches with a classifier and/or an autoencoder.

Per patch: p(artifact), uncertainty (entropy, margin; MC-dropout BALD optionally), the AE's
reconstruction error as a robust z-score against the pool's reference distribution, and an
embedding for diversity. Batches stream through; nothing holds the pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from models.acquisition import margin_uncertainty
from models.networks import Autoencoder, Classifier, dihedral_views, for_inference


@dataclass
class Scores:
    p_artifact: np.ndarray  # NaN without a classifier
    entropy: np.ndarray
    margin: np.ndarray  # 1 - |2p - 1|: 1 at p = 0.5
    bald: np.ndarray  # NaN unless MC dropout was asked for
    recon_error: np.ndarray  # robust z-score; NaN without an autoencoder
    embedding: np.ndarray  # (n, d) float16

    @classmethod
    def concat(cls, parts: list[Scores]) -> Scores:
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__)
        )


def binary_entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return -(q * np.log2(q) + (1 - q) * np.log2(1 - q))


@torch.no_grad()
def score_batch(
    x: np.ndarray,
    *,
    classifier: Classifier | None,
    autoencoder: Autoencoder | None,
    temperature: float = 1.0,
    recon_reference: dict[str, float] | None = None,
    mc_samples: int = 0,
    tta: int = 1,
) -> Scores:
    """Scores of one batch. ``tta`` > 1 averages the classifier's logits and features over
    that many flips/quarter turns of each patch (use the ``tta`` it was calibrated with)."""
    n = len(x)
    nan = np.full(n, np.nan, dtype=np.float32)
    model = classifier if classifier is not None else autoencoder
    assert model is not None, "need a classifier or an autoencoder"
    dev = next(model.parameters()).device
    xb = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
    p, entropy, margin, bald = nan, nan, nan, nan
    if classifier is not None:
        fast = for_inference(classifier)
        per_view = [fast.features(view) for view in dihedral_views(xb, max(1, tta))]
        feats = torch.stack(per_view).mean(0)
        logit = torch.stack([fast.head(f)[0].float() for f in per_view]).mean(0)
        p = torch.sigmoid(logit / temperature).float().cpu().numpy()
        entropy = binary_entropy(p)
        margin = margin_uncertainty(p)
        embedding = feats[:, : feats.shape[1] // 2].float().cpu().numpy()
        if mc_samples > 1:
            fast.head.train()  # dropout on, BatchNorm untouched (the head has none)
            samples = np.stack(
                [
                    torch.sigmoid(fast.head(feats)[0] / temperature).float().cpu().numpy()
                    for _ in range(mc_samples)
                ]
            )
            bald = binary_entropy(samples.mean(0)) - binary_entropy(samples).mean(0)
    recon = nan
    if autoencoder is not None:
        fast_ae = for_inference(autoencoder)
        xin = next(dihedral_views(xb, 1))
        reconstruction, ae_embedding = fast_ae.reconstruct(xin)
        err = ((reconstruction - xb) ** 2).mean(dim=(1, 2, 3)).float().cpu().numpy()
        ref = recon_reference or {"median": 0.0, "mad": 1.0}
        recon = (err - ref["median"]) / (1.4826 * max(ref["mad"], 1e-9))
        if classifier is None:
            embedding = ae_embedding.float().cpu().numpy()
    return Scores(
        p_artifact=np.asarray(p, np.float32),
        entropy=np.asarray(entropy, np.float32),
        margin=np.asarray(margin, np.float32),
        bald=np.asarray(bald, np.float32),
        recon_error=np.asarray(recon, np.float32),
        embedding=embedding.astype(np.float16),
    )


def score_stream(
    batches: Iterable[np.ndarray],
    *,
    classifier: Classifier | None,
    autoencoder: Autoencoder | None,
    temperature: float = 1.0,
    recon_reference: dict[str, float] | None = None,
    mc_samples: int = 0,
    tta: int = 1,
) -> Scores:
    """Score every batch; only the small per-patch results are kept."""
    parts = [
        score_batch(
            b,
            classifier=classifier,
            autoencoder=autoencoder,
            temperature=temperature,
            recon_reference=recon_reference,
            mc_samples=mc_samples,
            tta=tta,
        )
        for b in batches
    ]
    if not parts:
        empty = np.empty(0, np.float32)
        return Scores(empty, empty, empty, empty, empty, np.empty((0, 0), np.float16))
    return Scores.concat(parts)


def score_with_shortlist(
    x: np.ndarray,
    *,
    classifier: Classifier,
    tta: int,
    shortlist: float,
    temperature: float = 1.0,
    single_view_temperature: float | None = None,
) -> Scores:
    """A classifier's scores of one batch, paying for ``tta`` views only where they matter:
    every patch is scored with one view (calibrated with ``single_view_temperature``), then the
    ``shortlist`` share of the batch nearest p = 0.5 is scored again with ``tta`` views
    (calibrated with ``temperature``). ``shortlist`` 1 scores every patch with ``tta`` views."""
    if tta <= 1 or shortlist >= 1.0:
        return score_batch(
            x, classifier=classifier, autoencoder=None, temperature=temperature, tta=tta
        )
    one_view_t = temperature if single_view_temperature is None else single_view_temperature
    first = score_batch(x, classifier=classifier, autoencoder=None, temperature=one_view_t)
    k = min(len(x), int(np.ceil(shortlist * len(x))))
    if k == 0:
        return first
    near = np.sort(np.argpartition(-np.nan_to_num(first.margin, nan=-1.0), k - 1)[:k])
    again = score_batch(
        x[near], classifier=classifier, autoencoder=None, temperature=temperature, tta=tta
    )
    for name in ("p_artifact", "entropy", "margin", "embedding"):
        getattr(first, name)[near] = getattr(again, name)
    return first
