"""Self-describing checkpoints: architecture, config, normalisation, metrics and weights,
loaded with ``torch.load(weights_only=True)`` (plain types and tensors only)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from models.networks import Autoencoder, AutoencoderConfig, Classifier, ClassifierConfig

FORMAT = 1


def save_checkpoint(
    path: Path,
    *,
    model: Autoencoder | Classifier,
    norm: tuple[float, float],
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write atomically (temp file + rename); returns the file's sha256."""
    arch = "autoencoder" if isinstance(model, Autoencoder) else "classifier"
    payload = {
        "format": FORMAT,
        "architecture": arch,
        "config": model.config.to_dict(),
        "norm": {"mean": float(norm[0]), "std": float(norm[1])},
        "metrics": metrics or {},
        "extra": extra or {},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return sha256_of(path)


def load_checkpoint(
    path: Path, *, device: str | torch.device = "cpu"
) -> tuple[Any, dict[str, Any]]:
    """The model (in eval mode) and the checkpoint's metadata."""
    payload = torch.load(Path(path), map_location=device, weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {payload.get('format')!r}")
    model: Autoencoder | Classifier
    if payload["architecture"] == "autoencoder":
        model = Autoencoder(AutoencoderConfig.from_dict(payload["config"]))
    elif payload["architecture"] == "classifier":
        model = Classifier(ClassifierConfig.from_dict(payload["config"]))
    else:
        raise ValueError(f"{path}: unknown architecture {payload['architecture']!r}")
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
