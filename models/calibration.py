"""Turning a classifier's logits into calibrated probabilities and a decision threshold:
logits averaged over test-time views, temperature scaling, the best-F1 threshold."""

from __future__ import annotations

import numpy as np
import torch

from models.networks import Classifier, dihedral_views, for_inference


@torch.no_grad()
def predict_logits(
    model: Classifier, patches: np.ndarray, *, batch_size: int = 64, tta: int = 1
) -> np.ndarray:
    """Artifact logits of ``patches`` (n, 1, h, w), averaged over the first ``tta`` of the
    8 flips/quarter turns (test-time augmentation: 8 views gave +0.02-0.03 PR-AUC on
    held-out synthetic sections, for 8x the compute). ``patches`` may be a memory map: it
    is read a batch at a time."""
    fast = for_inference(model)
    dev = next(fast.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(patches), batch_size):
            xb = torch.from_numpy(np.asarray(patches[start : start + batch_size], np.float32))
            views = [fast(view)[0].float() for view in dihedral_views(xb.to(dev), tta)]
            out.append((torch.stack(views).mean(0)).cpu().numpy())
    return np.concatenate(out) if out else np.empty(0, np.float32)


def calibrated(logits: np.ndarray, temperature: float) -> np.ndarray:
    """p = sigmoid(logit / T) in float64: float32 rounds every logit/T above ~17 to 1.0
    (float64: above ~37), and those ties would hide the order of confident predictions."""
    return 1 / (1 + np.exp(-np.asarray(logits, np.float64) / temperature))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling: the T minimising the NLL of sigmoid(logit / T) on held-out labels."""
    if len(logits) < 4 or len(np.unique(labels)) < 2:
        return 1.0
    candidates = np.exp(np.linspace(np.log(0.25), np.log(8.0), 60))
    z = logits[None, :] / candidates[:, None]
    y = labels[None, :]
    nll = np.mean(np.logaddexp(0, z) - y * z, axis=1)
    return float(candidates[int(np.argmin(nll))])


def best_f1_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The probability threshold with the best F1 on held-out labels (0.5 without positives)."""
    if labels.sum() == 0 or len(labels) < 4:
        return 0.5
    best_t, best_f1 = 0.5, -1.0
    for t in np.unique(np.round(probs, 3)):
        pred = probs >= t
        tp = float((pred & (labels == 1)).sum())
        f1 = 2 * tp / max(float(pred.sum()) + float(labels.sum()), 1.0)
        if f1 > best_f1:
            best_t, best_f1 = float(t), f1
    return best_t
