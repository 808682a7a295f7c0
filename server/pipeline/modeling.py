"""Glue between the loop's jobs and ``models``: read patches from the dataset, train, score,
propose. Called by the job handlers in :mod:`server.pipeline.loop`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from server.datasets.service import patch_extent
from server.db.tables import Dataset, Label
from server.pixels.grid import Grid
from server.pixels.source import PatchSource
from server.settings import Settings

Report = Callable[[float, str], None]
READ_BATCH = 256
EXAMPLES_PER_GALLERY = 8


@dataclass(frozen=True)
class Outcome:
    config: dict[str, Any]
    metrics: dict[str, Any]
    weights_path: Path
    weights_sha256: str


def _threads(settings: Settings) -> None:
    import torch

    if settings.device in ("auto", "cpu") and not torch.cuda.is_available():
        torch.set_num_threads(max(1, os.cpu_count() or 1))


def _read(
    source: PatchSource, dataset: Dataset, origins: np.ndarray, *, report: Report | None = None
) -> np.ndarray:
    """Normalised patches ``(n, 1, p, p)`` at ``origins`` (mag-1 top-left corners)."""
    parts = []
    for start in range(0, len(origins), READ_BATCH):
        parts.append(
            source.read_normalised(
                origins[start : start + READ_BATCH],
                mean=dataset.norm_mean,
                std=dataset.norm_std,
                size_px=dataset.patch_size,
            )
        )
        if report is not None:
            report(min(1.0, (start + READ_BATCH) / len(origins)), "reading patches")
    if not parts:
        p = dataset.patch_size
        return np.empty((0, 1, p, p), dtype=np.float32)
    return np.concatenate(parts)


# -- pretraining ------------------------------------------------------------------------------
def pretrain_autoencoder(
    *,
    source: PatchSource,
    grid: Grid,
    dataset: Dataset,
    out_dir: Path,
    settings: Settings,
    params: dict[str, Any],
    progress: Report,
) -> Outcome:
    from models.checkpoint import save_checkpoint
    from models.training import pretrain_autoencoder as train

    _threads(settings)
    n = min(int(params.get("patches", settings.pretrain_patches)), len(grid))
    epochs = int(params.get("epochs", settings.pretrain_epochs))
    rng = np.random.default_rng(int(params.get("seed", 0)))
    indices = np.sort(rng.choice(len(grid), size=n, replace=False))
    patches = _read(
        source, dataset, grid.origins(indices), report=lambda f, m: progress(0.1 * f, m)
    )

    def on_epoch(fraction: float, message: str, _record: dict[str, Any]) -> None:
        progress(0.1 + 0.9 * fraction, message)

    result = train(
        patches,
        epochs=epochs,
        seed=int(params.get("seed", 0)),
        device=settings.device,
        progress=on_epoch,
    )
    metrics = {
        "val_mse": result.val_loss,
        "history": result.history,
        "patches": n,
        "recon_reference": result.recon_reference,
    }
    path = out_dir / "autoencoder.pt"
    sha = save_checkpoint(
        path,
        model=result.model,
        norm=(dataset.norm_mean, dataset.norm_std),
        metrics=metrics,
        extra={"recon_reference": result.recon_reference},
    )
    return Outcome(
        config={"architecture": "autoencoder", **result.model.config.to_dict(), "epochs": epochs},
        metrics=metrics,
        weights_path=path,
        weights_sha256=sha,
    )


# -- classifier -------------------------------------------------------------------------------
def _label_origins(dataset: Dataset, labels: list[Label]) -> np.ndarray:
    """Top-left of the dataset-sized patch centred on each label box, kept inside the bbox."""
    w, h = patch_extent(dataset)
    out = np.empty((len(labels), 3), dtype=np.int64)
    for i, lab in enumerate(labels):
        cx, cy = lab.x + lab.w // 2, lab.y + lab.h // 2
        x = min(max(cx - w // 2, dataset.bbox_x), dataset.bbox_x + dataset.bbox_w - w)
        y = min(max(cy - h // 2, dataset.bbox_y), dataset.bbox_y + dataset.bbox_h - h)
        out[i] = (x, y, lab.z)
    return out


def train_classifier(
    *,
    source: PatchSource,
    dataset: Dataset,
    ae_weights: Path,
    train_labels: list[Label],
    audit_labels: list[Label],
    out_dir: Path,
    settings: Settings,
    params: dict[str, Any],
    progress: Report,
    snapshot_id: int,
) -> Outcome:
    from models.checkpoint import load_checkpoint, save_checkpoint
    from models.metrics import classification_report
    from models.training import calibrated, predict_logits
    from models.training import train_classifier as train
    from models.vocab import ARTIFACT_TYPES

    _threads(settings)
    ae, _ = load_checkpoint(ae_weights)
    x = _read(
        source,
        dataset,
        _label_origins(dataset, train_labels),
        report=lambda f, m: progress(0.1 * f, m),
    )
    y = np.asarray([lab.label == "artifact" for lab in train_labels], dtype=np.float32)
    types = np.asarray(
        [
            ARTIFACT_TYPES.index(lab.artifact_type) if lab.artifact_type in ARTIFACT_TYPES else -1
            for lab in train_labels
        ],
        dtype=np.int64,
    )
    use_types = bool((types >= 0).sum() >= 10)

    def on_epoch(fraction: float, message: str, _record: dict[str, Any]) -> None:
        progress(0.1 + 0.8 * fraction, message)

    result = train(
        x,
        y,
        autoencoder=ae,
        types=types if use_types else None,
        epochs=int(params.get("epochs", settings.train_epochs)),
        patience=int(params.get("patience", 20)),
        tta=settings.tta,
        seed=int(params.get("seed", 0)),
        device=settings.device,
        progress=on_epoch,
    )
    metrics: dict[str, Any] = {
        "history": result.history,
        "labels": {
            "total": len(train_labels),
            "artifact": int(y.sum()),
            "clean": int(len(y) - y.sum()),
        },
        "validation": result.validation,
        "temperature": result.temperature,
        "threshold": result.threshold,
        "tta": result.tta,
        "single_view": result.single_view,
    }
    if audit_labels:
        progress(0.92, "evaluating on the audit set")
        xa = _read(source, dataset, _label_origins(dataset, audit_labels))
        ya = np.asarray([lab.label == "artifact" for lab in audit_labels], dtype=bool)
        logits = predict_logits(result.model, xa, tta=result.tta)
        pa = calibrated(logits, result.temperature)
        report = classification_report(ya, pa, threshold=result.threshold)
        report["examples"] = _examples(audit_labels, ya, pa, result.threshold)
        metrics["audit"] = report
    path = out_dir / "classifier.pt"
    sha = save_checkpoint(
        path,
        model=result.model,
        norm=(dataset.norm_mean, dataset.norm_std),
        metrics={k: v for k, v in metrics.items() if k != "audit"},
        extra={
            "temperature": result.temperature,
            "threshold": result.threshold,
            "tta": result.tta,
            "single_view_temperature": result.single_view["temperature"],
            "single_view_threshold": result.single_view["threshold"],
            "label_snapshot_id": snapshot_id,
            "ae_weights": str(ae_weights),
        },
    )
    return Outcome(
        config={
            "architecture": "classifier",
            **result.model.config.to_dict(),
            "temperature": result.temperature,
            "threshold": result.threshold,
            "single_view_threshold": result.single_view["threshold"],
        },
        metrics=metrics,
        weights_path=path,
        weights_sha256=sha,
    )


def _examples(
    labels: list[Label], truth: np.ndarray, p: np.ndarray, threshold: float
) -> dict[str, Any]:
    pred = p >= threshold

    def items(mask: np.ndarray, order: np.ndarray) -> list[dict[str, Any]]:
        chosen = [i for i in order if mask[i]][:EXAMPLES_PER_GALLERY]
        return [
            {
                "x": labels[i].x,
                "y": labels[i].y,
                "z": labels[i].z,
                "p_artifact": float(p[i]),
                "label": "artifact" if truth[i] else "clean",
            }
            for i in chosen
        ]

    by_p = np.argsort(-p)
    return {
        "true_positive": items(truth & pred, by_p),
        "false_positive": items(~truth & pred, by_p),
        "false_negative": items(truth & ~pred, np.argsort(p)),
        "most_uncertain": items(np.ones_like(truth), np.argsort(np.abs(p - threshold))),
    }


# -- scoring ----------------------------------------------------------------------------------
def load_classifier(weights: Path, *, settings: Settings) -> tuple[Any, float]:
    """A classifier checkpoint, made ready for fast forward passes (BatchNorm folded into the
    convs, eval mode), and the calibration temperature of one view's logits (dense prediction
    runs one view per cell); cached per process, since chunk jobs reuse the same one."""
    _threads(settings)
    return _load_classifier(str(weights))


@lru_cache(maxsize=2)
def _load_classifier(path: str) -> tuple[Any, float]:
    from models.checkpoint import load_checkpoint
    from models.networks import for_inference

    model, meta = load_checkpoint(Path(path))
    extra = meta["extra"]  # one view per cell here: its own calibration, where recorded
    return for_inference(model), float(
        extra.get("single_view_temperature", extra.get("temperature", 1.0))
    )


def score_chunk(
    *,
    source: PatchSource,
    grid: Grid,
    dataset: Dataset,
    start: int,
    stop: int,
    weights: Path,
    ae_weights: Path | None,
    kind: str,
    out_file: Path,
    settings: Settings,
    progress: Report,
) -> dict[str, Any]:
    """Score grid patches ``start:stop`` and write them to ``out_file`` (.npz, atomically)."""
    from models.checkpoint import load_checkpoint
    from models.networks import for_inference
    from models.scoring import Scores, score_batch

    _threads(settings)
    classifier, temperature, tta = None, 1.0, 1
    autoencoder, reference = None, None
    if kind == "classifier":
        model, meta = load_checkpoint(weights)
        classifier = for_inference(model)  # once here, not once per batch
        temperature = float(meta["extra"].get("temperature", 1.0))
        tta = int(meta["extra"].get("tta", 1))  # score as it was calibrated
    if ae_weights is not None:
        ae_model, ae_meta = load_checkpoint(ae_weights)
        autoencoder = for_inference(ae_model)
        reference = ae_meta["extra"].get("recon_reference")
    indices = np.arange(start, stop, dtype=np.int64)
    parts = []
    for i, batch in enumerate(_batches(source, dataset, grid, indices)):
        parts.append(
            score_batch(
                batch,
                classifier=classifier,
                autoencoder=autoencoder,
                temperature=temperature,
                recon_reference=reference,
                tta=tta,
            )
        )
        progress(
            min(1.0, (i + 1) * READ_BATCH / max(len(indices), 1)),
            f"scored {min(len(indices), (i + 1) * READ_BATCH)} patches",
        )
    scores = Scores.concat(parts)
    tmp = out_file.with_name(out_file.name + ".tmp.npz")
    np.savez(
        tmp,
        index=indices,
        p_artifact=scores.p_artifact,
        uncertainty=scores.margin,
        entropy=scores.entropy,
        recon_error=scores.recon_error,
        embedding=scores.embedding,
    )
    os.replace(tmp, out_file)
    summary = {"patches": len(indices), "file": out_file.name}
    if kind == "classifier" and len(indices):
        summary["mean_p"] = float(np.nanmean(scores.p_artifact))
    return summary


def _batches(
    source: PatchSource, dataset: Dataset, grid: Grid, indices: np.ndarray
) -> Iterator[np.ndarray]:
    for s in range(0, len(indices), READ_BATCH):
        yield _read(source, dataset, grid.origins(indices[s : s + READ_BATCH]))


# -- proposals --------------------------------------------------------------------------------
def propose_batch(
    *, scores_dir: Path, kind: str, excluded: np.ndarray, batch_size: int, seed: int
) -> list[dict[str, Any]]:
    """Merge the chunk files of a scoring run and pick the next batch."""
    from models.acquisition import cold_start_batch, hybrid_batch

    files = sorted(scores_dir.glob("chunk-*.npz"))
    if not files:
        return []
    data: dict[str, list[np.ndarray]] = {}
    for f in files:
        with np.load(f) as z:
            for key in ("index", "p_artifact", "uncertainty", "recon_error", "embedding"):
                data.setdefault(key, []).append(z[key])
    merged = {k: np.concatenate(v) for k, v in data.items()}
    idx = merged["index"]
    if kind == "classifier":
        picks = hybrid_batch(
            idx,
            p_artifact=merged["p_artifact"],
            recon_error=merged["recon_error"],
            embedding=merged["embedding"],
            excluded=excluded,
            batch_size=batch_size,
            seed=seed,
        )
    else:
        picks = cold_start_batch(
            idx,
            recon_error=merged["recon_error"],
            embedding=merged["embedding"],
            excluded=excluded,
            batch_size=batch_size,
            seed=seed,
        )
    position = {int(i): n for n, i in enumerate(idx)}
    out = []
    for pick in picks:
        n = position[pick.index]
        out.append(
            {
                "index": pick.index,
                "reason": pick.reason,
                "score": pick.score,
                "p_artifact": float(merged["p_artifact"][n]),
                "uncertainty": float(merged["uncertainty"][n]),
                "recon_error": float(merged["recon_error"][n]),
            }
        )
    (scores_dir / "proposed.json").write_text(json.dumps(out))
    return out
