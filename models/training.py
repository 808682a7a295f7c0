"""Training loops: autoencoder pretraining and AE-initialised classifier training.

Data arrive as arrays of normalised patches ``(n, 1, h, w)`` float32; the loops know nothing
about datasets. Progress goes to a callback ``progress(fraction, message, record)`` where
``record`` holds the epoch's numbers (for a job's progress and a dashboard's loss curve).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from models.calibration import best_f1_threshold, calibrated, fit_temperature, predict_logits
from models.metrics import classification_report
from models.networks import (
    DIHEDRAL,
    Autoencoder,
    AutoencoderConfig,
    Classifier,
    ClassifierConfig,
    dihedral,
    dihedral_views,
    for_inference,
)

Progress = Callable[[float, str, dict[str, Any]], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per patch: one of the 8 flips/quarter turns, and brightness/contrast jitter.

    Drawn per patch rather than per batch, so every batch mixes orientations (a batch that
    all points one way biases the BatchNorm statistics of that step)."""
    n = x.shape[0]
    view = torch.randint(0, len(DIHEDRAL), (n,), generator=generator)
    out = torch.empty_like(x)
    for v, (k, flip) in enumerate(DIHEDRAL):
        chosen = view == v
        if bool(chosen.any()):
            out[chosen] = dihedral(x[chosen], k, flip)
    gain = 1 + 0.15 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 2
    shift = 0.15 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 2
    return out * gain.to(x.device) + shift.to(x.device)


# -- autoencoder ------------------------------------------------------------------------------
@dataclass
class AutoencoderResult:
    model: Autoencoder
    history: list[dict[str, float]]
    val_loss: float
    recon_reference: dict[str, float]  # median and MAD of per-patch errors on held-out patches


def pretrain_autoencoder(
    patches: np.ndarray,
    *,
    config: AutoencoderConfig | None = None,
    epochs: int = 6,
    batch_size: int = 32,
    lr: float = 2e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str = "auto",
    progress: Progress | None = None,
) -> AutoencoderResult:
    """Train with MSE on unlabeled patches; keep the epoch with the best validation loss."""
    seed_everything(seed)
    dev = pick_device(device)
    model = Autoencoder(config).to(dev)
    cpu = dev.type == "cpu"
    if cpu:
        model = model.to(memory_format=torch.channels_last)  # ~1.4x faster convs on the CPU
    n_val = max(1, int(len(patches) * val_fraction))
    order = np.random.default_rng(seed).permutation(len(patches))
    val, train = patches[order[:n_val]], patches[order[n_val:]]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(1, epochs * math.ceil(len(train) / batch_size))
    )
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    history: list[dict[str, float]] = []
    best = (math.inf, {k: v.detach().clone() for k, v in model.state_dict().items()})
    shuffle = np.random.default_rng(seed + 1)
    for epoch in range(epochs):
        model.train()
        losses = []
        epoch_order = shuffle.permutation(len(train))
        for start in range(0, len(train), batch_size):
            xb = torch.from_numpy(train[epoch_order[start : start + batch_size]]).to(dev)
            if cpu:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, enabled=dev.type == "cuda"):
                loss = F.mse_loss(model(xb), xb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(float(loss.detach()))
        val_errors = reconstruction_errors(model, val, batch_size=batch_size * 2)
        record = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "val_loss": float(val_errors.mean()),
        }
        history.append(record)
        if record["val_loss"] < best[0]:
            best = (
                record["val_loss"],
                {k: v.detach().clone() for k, v in model.state_dict().items()},
            )
        if progress is not None:
            progress(
                (epoch + 1) / epochs,
                f"epoch {epoch + 1}/{epochs}: MSE {record['val_loss']:.4f}",
                record,
            )
    model.load_state_dict(best[1])
    model = model.to(memory_format=torch.contiguous_format).eval()
    errors = reconstruction_errors(model, val, batch_size=batch_size * 2)
    median = float(np.median(errors))
    mad = float(np.median(np.abs(errors - median))) or 1e-6
    return AutoencoderResult(model, history, best[0], {"median": median, "mad": mad})


@torch.no_grad()
def reconstruction_errors(
    model: Autoencoder, patches: np.ndarray, *, batch_size: int = 64
) -> np.ndarray:
    """Mean squared reconstruction error per patch."""
    fast = for_inference(model)
    dev = next(fast.parameters()).device
    out = []
    for start in range(0, len(patches), batch_size):
        xb = torch.from_numpy(np.asarray(patches[start : start + batch_size], np.float32))
        xb = next(dihedral_views(xb.to(dev), 1))
        out.append(((fast(xb) - xb) ** 2).mean(dim=(1, 2, 3)).float().cpu().numpy())
    return np.concatenate(out) if out else np.empty(0, np.float32)


# -- classifier -------------------------------------------------------------------------------
@dataclass
class ClassifierResult:
    model: Classifier
    temperature: float
    threshold: float
    history: list[dict[str, float]]
    validation: dict[str, Any] = field(default_factory=dict)
    tta: int = 1  # views averaged for the calibration: score with as many
    # temperature and threshold for single-view logits (dense prediction runs one view)
    single_view: dict[str, float] = field(default_factory=dict)


def train_classifier(
    patches: np.ndarray,
    labels: np.ndarray,
    *,
    autoencoder: Autoencoder | None = None,
    init: Classifier | None = None,
    types: np.ndarray | None = None,
    sample_weights: np.ndarray | None = None,
    config: ClassifierConfig | None = None,
    epochs: int = 60,
    frozen_epochs: int = 0,
    batch_size: int = 16,
    lr: float = 2e-3,
    encoder_lr_factor: float = 1.0,
    val_fraction: float = 0.2,
    patience: int = 20,
    min_epochs: int = 10,
    ema_decay: float = 0.99,
    tta: int = 8,
    seed: int = 0,
    device: str = "auto",
    progress: Progress | None = None,
) -> ClassifierResult:
    """Train encoder + head on labelled patches (1 = artifact).

    The encoder starts from the autoencoder, or encoder and head from ``init`` (an earlier
    version, trained on fewer labels: a warm start, which on real-tissue validation sections
    ranked better and swung less between versions; a type head of another size starts
    afresh). It may stay frozen for ``frozen_epochs`` and then
    trains at ``encoder_lr_factor`` times the head's rate (on the synthetic benchmark, full
    fine-tuning from the first epoch gave the best held-out F1: 0.73 vs 0.54 with 3 frozen
    epochs and a 0.1 factor, 600 labels). Positives are rare: every epoch draws half of its
    batches' patches from the positives (with replacement) and half from the negatives.
    The weights that are evaluated and kept are an exponential moving average (``ema_decay``
    per step) of the trained ones, with early stopping on the validation loss; the first
    ``min_epochs`` are never kept (with few, hard actively-chosen labels the validation loss
    can be lowest after one epoch, for a model that ranks typical patches at random). A
    temperature and a threshold are fitted on the validation split, on logits averaged over
    ``tta`` flips/rotations (:func:`predict_logits`), the way the model is then used.
    ``sample_weights`` (0 to 1 per patch, e.g. how sure a consensus of several annotators is)
    scale each patch's share of the training and validation loss; None trains as all ones.
    """
    seed_everything(seed)
    dev = pick_device(device)
    y = np.asarray(labels, dtype=np.float32)
    sw = _checked_weights(sample_weights, len(y))
    n_types = int(types.max()) + 1 if types is not None and (types >= 0).any() else 0
    base = config or ClassifierConfig()
    config = ClassifierConfig(base.encoder, n_types, base.dropout, base.hidden)
    model = Classifier(config).to(dev)
    if autoencoder is not None:
        model.load_encoder_from(autoencoder)
    if init is not None:  # a previous version: every weight whose shape still fits
        own = model.state_dict()
        model.load_state_dict(
            {k: v for k, v in init.state_dict().items() if k in own and own[k].shape == v.shape},
            strict=False,
        )
    if dev.type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # ~1.4x faster convs on the CPU
    ema = (
        AveragedModel(model, multi_avg_fn=_ema_with_warmup(ema_decay), use_buffers=True)
        if ema_decay > 0
        else None
    )
    kept = ema.module if ema is not None else model
    train_idx, val_idx = _stratified_split(y, val_fraction, seed)
    pos = max(float(y[train_idx].sum()), 1.0)
    # the validation loss weighs classes equally, like the balanced batches
    pos_weight = torch.tensor(max(1.0, (len(train_idx) - pos) / pos))
    opt = torch.optim.AdamW(
        [
            {"params": list(model.head.parameters()), "lr": lr},
            {"params": model.encoder.parameters(), "lr": lr * encoder_lr_factor},
        ],
        weight_decay=1e-4,
    )
    cuda = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    best_loss, best_state, stale = math.inf, None, 0
    xt = torch.from_numpy(patches)
    yt = torch.from_numpy(y)
    tt = torch.from_numpy(np.asarray(types, dtype=np.int64)) if n_types else None
    for epoch in range(epochs):
        frozen = epoch < frozen_epochs and autoencoder is not None
        for p in model.encoder.parameters():
            p.requires_grad_(not frozen)
        model.train()
        if frozen:
            model.encoder.eval()  # keep the AE's BatchNorm statistics while frozen
        order = balanced_order(y, train_idx, gen)
        losses = []
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:
                continue
            xb = augment(xt[idx], gen).to(dev)
            if not cuda:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = yt[idx].to(dev)
            with torch.autocast(dev.type, enabled=cuda):
                logit, type_logits = model(xb)
                wb = sw[idx].to(dev) if sw is not None else None
                loss = F.binary_cross_entropy_with_logits(logit.float(), yb, weight=wb)
                if type_logits is not None and tt is not None:
                    tb = tt[idx].to(dev)
                    typed = tb >= 0
                    if typed.any():
                        loss = loss + 0.3 * F.cross_entropy(type_logits[typed].float(), tb[typed])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(float(loss.detach()))
        val_logits = predict_logits(kept, patches[val_idx])
        val_loss = float(
            F.binary_cross_entropy_with_logits(
                torch.from_numpy(val_logits),
                yt[val_idx],
                pos_weight=pos_weight,
                weight=sw[val_idx] if sw is not None else None,
            )
        )
        record = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses or [0.0])),
            "val_loss": val_loss,
        }
        history.append(record)
        if progress is not None:
            progress(
                (epoch + 1) / epochs, f"epoch {epoch + 1}/{epochs}: loss {val_loss:.3f}", record
            )
        if epoch + 1 < min(min_epochs, epochs):
            continue
        if val_loss < best_loss - 1e-4:
            best_loss, stale = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in kept.state_dict().items()}
        else:
            stale += 1
            if stale >= patience and epoch >= frozen_epochs:
                break
    result = Classifier(config)
    result.load_state_dict(best_state if best_state is not None else kept.state_dict())
    result.to(dev).eval()
    val_logits = predict_logits(result, patches[val_idx], tta=tta)
    temperature = fit_temperature(val_logits, y[val_idx])
    probs = calibrated(val_logits, temperature)
    threshold = best_f1_threshold(y[val_idx], probs)
    validation = classification_report(y[val_idx], probs, threshold=threshold)
    single = {"temperature": temperature, "threshold": threshold}
    if tta > 1:  # averaged logits are milder than one view's: calibrate that view as well
        one = predict_logits(result, patches[val_idx])
        t1 = fit_temperature(one, y[val_idx])
        single = {
            "temperature": t1,
            "threshold": best_f1_threshold(y[val_idx], calibrated(one, t1)),
        }
    return ClassifierResult(result, temperature, threshold, history, validation, tta, single)


def _checked_weights(weights: np.ndarray | None, n: int) -> torch.Tensor | None:
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float32)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"sample_weights: {n} finite weights >= 0, one per patch, expected")
    return torch.from_numpy(w)


def _ema_with_warmup(decay: float) -> Callable[..., None]:
    """EMA update whose decay ramps up, (1 + n) / (10 + n) after n steps, to ``decay``: with
    few labels an epoch is a handful of steps, and a plain 0.99 would keep the untrained
    head in the average for dozens of epochs (early stopping then picked near-random ones)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        d = min(decay, (1 + float(n)) / (10 + float(n)))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # integer buffers (BatchNorm's batch counter): take the current value
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


def balanced_order(y: np.ndarray, train_idx: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """One epoch's sample order, as long as ``train_idx``: half positives, drawn with
    replacement (there are few), and half negatives without; shuffled together. With one
    class only, a plain shuffle."""
    pos = train_idx[y[train_idx] == 1]
    neg = train_idx[y[train_idx] == 0]
    n = len(train_idx)
    if len(pos) == 0 or len(neg) == 0:
        return train_idx[torch.randperm(n, generator=generator).numpy()]
    n_pos = n // 2
    picks = np.concatenate(
        [
            pos[torch.randint(len(pos), (n_pos,), generator=generator).numpy()],
            neg[torch.randperm(len(neg), generator=generator).numpy()[: n - n_pos]],
        ]
    )
    return picks[torch.randperm(len(picks), generator=generator).numpy()]


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in (0.0, 1.0):
        idx = rng.permutation(np.nonzero(y == cls)[0])
        n_val = round(len(idx) * fraction)
        n_val = min(max(n_val, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.concatenate(train), np.concatenate(val)
