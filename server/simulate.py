"""Offline active-learning benchmark: acquisition strategies against random sampling.

Any webKnossos dataset folder with a ``ground_truth.csv`` (columns read by name: x, y, z, w,
h, label, type) serves as the oracle. Whole z-sections are held out as the test set, with
the dataset's real prevalence. The autoencoder is pretrained once on unlabelled pool patches
(shared by all seeds and strategies, so they differ only in what they label); then, per seed
and strategy, rounds of train -> score -> acquire -> label until the budget is spent.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.errors import InvalidInput

STRATEGIES = ("random", "uncertainty", "recon", "hybrid")


@dataclass(frozen=True)
class SimulationConfig:
    strategies: tuple[str, ...] = STRATEGIES
    budget: int = 400
    batch: int = 25
    seeds: int = 5
    test_every: int = 5  # every 5th section is a test section
    candidates: int = 4000  # pool patches scored per round (a fresh random subset each round)
    pretrain_patches: int = 2000
    pretrain_epochs: int = 6
    train_epochs: int = 40
    layer: str = "color"


def quick_config(strategies: tuple[str, ...]) -> SimulationConfig:
    return SimulationConfig(
        strategies=strategies,
        budget=60,
        batch=20,
        seeds=1,
        candidates=300,
        pretrain_patches=200,
        pretrain_epochs=1,
        train_epochs=5,
    )


def load_truth(dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    """Patch origins ``(n, 3)`` and labels (1 = artifact) from ``ground_truth.csv``."""
    path = dataset / "ground_truth.csv"
    if not path.exists():
        raise InvalidInput(f"{dataset} has no ground_truth.csv")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"x", "y", "z", "label"} - set(reader.fieldnames or [])
        if missing:
            raise InvalidInput(f"ground_truth.csv lacks columns {', '.join(sorted(missing))}")
        rows = list(reader)
    origins = np.asarray([[int(r["x"]), int(r["y"]), int(r["z"])] for r in rows], dtype=np.int64)
    labels = np.asarray([r["label"].strip().lower() == "artifact" for r in rows], dtype=bool)
    return origins, labels


def run_simulation(
    dataset: Path,
    *,
    out_dir: Path,
    config: SimulationConfig,
    device: str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    import torch

    from models.training import pretrain_autoencoder, reconstruction_errors
    from server.patches import PatchSource

    unknown = set(config.strategies) - set(STRATEGIES)
    if unknown:
        raise InvalidInput(
            f"unknown strategies {', '.join(sorted(unknown))}; use {', '.join(STRATEGIES)}"
        )
    started = time.perf_counter()
    origins, truth = load_truth(dataset)
    sections = np.unique(origins[:, 2])
    test_sections = sections[:: config.test_every]
    test = np.isin(origins[:, 2], test_sections)
    pool = np.nonzero(~test)[0]
    test_idx = np.nonzero(test)[0]

    with PatchSource.open(dataset, layer=config.layer, mag=1) as source:
        sample = source.read_patches(origins[np.linspace(0, len(origins) - 1, 64).astype(int)])
        mean, std = float(sample.mean()), float(sample.std()) or 1.0
        patches = np.concatenate(
            [
                source.read_normalised(origins[s : s + 512], mean=mean, std=std).astype(np.float16)
                for s in range(0, len(origins), 512)
            ]
        )
    rng = np.random.default_rng(0)
    ae_sample = rng.choice(pool, size=min(config.pretrain_patches, len(pool)), replace=False)
    ae = pretrain_autoencoder(
        patches[ae_sample].astype(np.float32), epochs=config.pretrain_epochs, seed=0, device=device
    )
    with torch.no_grad():
        recon = np.concatenate(
            [
                reconstruction_errors(ae.model, patches[s : s + 512].astype(np.float32))
                for s in range(0, len(patches), 512)
            ]
        )
        embed = np.concatenate(
            [
                ae.model.embed(torch.from_numpy(patches[s : s + 512].astype(np.float32))).numpy()
                for s in range(0, len(patches), 512)
            ]
        )
    ref = ae.recon_reference
    recon_z = (recon - ref["median"]) / (1.4826 * max(ref["mad"], 1e-9))

    rounds = -(-config.budget // config.batch)
    total = len(config.strategies) * config.seeds * rounds
    done = 0
    curves: dict[str, list[list[dict[str, Any]]]] = {s: [] for s in config.strategies}
    for seed in range(config.seeds):
        for strategy in config.strategies:
            curve = []
            labelled = np.empty(0, dtype=np.int64)
            model = None
            for r in range(rounds):
                picks = _acquire(
                    strategy,
                    pool=pool,
                    labelled=labelled,
                    model=model,
                    patches=patches,
                    recon_z=recon_z,
                    embed=embed,
                    batch=config.batch,
                    candidates=config.candidates,
                    seed=seed * 1000 + r,
                )
                labelled = np.concatenate([labelled, picks])
                model, record = _train_and_test(
                    ae.model,
                    patches,
                    truth,
                    labelled,
                    test_idx,
                    seed=seed,
                    epochs=config.train_epochs,
                    device=device,
                )
                record.update(
                    round=r + 1,
                    labels=len(labelled),
                    positives_found=int(truth[labelled].sum()),
                )
                curve.append(record)
                done += 1
                if progress is not None:
                    progress(
                        f"seed {seed} {strategy}: {len(labelled)} labels, test F1 {record['f1']:.2f}",
                        done,
                        total,
                    )
            curves[strategy].append(curve)
            _write_partial(out_dir, curves, seed=seed, strategy=strategy)

    results = _summarise(
        curves,
        config=config,
        n_pool=len(pool),
        n_test=len(test_idx),
        test_positives=int(truth[test_idx].sum()),
        seconds=time.perf_counter() - started,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.partial.json").unlink(missing_ok=True)
    _plot(results, out_dir / "learning_curves.png")
    return results


def _write_partial(
    out_dir: Path, curves: dict[str, list[list[dict[str, Any]]]], *, seed: int, strategy: str
) -> None:
    """Curves finished so far, so an interrupted run keeps what it measured."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "results.partial.json.tmp"
    tmp.write_text(json.dumps({"last": {"seed": seed, "strategy": strategy}, "curves": curves}))
    tmp.replace(out_dir / "results.partial.json")


def _acquire(
    strategy: str,
    *,
    pool: np.ndarray,
    labelled: np.ndarray,
    model: Any,
    patches: np.ndarray,
    recon_z: np.ndarray,
    embed: np.ndarray,
    batch: int,
    candidates: int,
    seed: int,
) -> np.ndarray:
    from models import acquisition as acq

    rng = np.random.default_rng(seed)
    if strategy == "random":
        picks = acq.random_batch(pool, excluded=labelled, batch_size=batch, seed=seed)
        return np.asarray([p.index for p in picks], dtype=np.int64)
    if model is None or len(np.unique(labelled)) == 0:
        # no classifier yet: everyone but random starts from the same cold start
        picks = acq.cold_start_batch(
            pool,
            recon_error=recon_z[pool],
            embedding=embed[pool],
            excluded=labelled,
            batch_size=batch,
            seed=seed,
        )
        return np.asarray([p.index for p in picks], dtype=np.int64)
    if strategy == "recon":
        picks = acq.recon_batch(pool, recon_z[pool], excluded=labelled, batch_size=batch)
        return np.asarray([p.index for p in picks], dtype=np.int64)
    free = np.setdiff1d(pool, labelled)
    cand = rng.choice(free, size=min(candidates, len(free)), replace=False)
    p = _predict(model, patches[cand])
    if strategy == "uncertainty":
        picks = acq.uncertainty_batch(cand, p, excluded=labelled, batch_size=batch)
    else:
        picks = acq.hybrid_batch(
            cand,
            p_artifact=p,
            recon_error=recon_z[cand],
            embedding=embed[cand],
            excluded=labelled,
            batch_size=batch,
            seed=seed,
        )
    return np.asarray([pk.index for pk in picks], dtype=np.int64)


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    from models.training import predict_logits

    clf, temperature = model
    logits = np.concatenate(
        [predict_logits(clf, x[s : s + 512].astype(np.float32)) for s in range(0, len(x), 512)]
    )
    return 1 / (1 + np.exp(-logits / temperature))


def _train_and_test(
    ae: Any,
    patches: np.ndarray,
    truth: np.ndarray,
    labelled: np.ndarray,
    test_idx: np.ndarray,
    *,
    seed: int,
    epochs: int,
    device: str,
) -> tuple[Any, dict[str, Any]]:
    from models.metrics import classification_report
    from models.training import train_classifier

    y = truth[labelled].astype(np.float32)
    if y.min() == y.max():  # one class only: nothing to learn yet
        return None, {
            "f1": 0.0,
            "pr_auc": float(truth[test_idx].mean()),
            "precision_at_recall_0.9": 0.0,
        }
    result = train_classifier(
        patches[labelled].astype(np.float32),
        y,
        autoencoder=ae,
        epochs=epochs,
        seed=seed,
        device=device,
    )
    model = (result.model, result.temperature)
    report = classification_report(
        truth[test_idx], _predict(model, patches[test_idx]), threshold=result.threshold
    )
    return model, {
        k: report[k] for k in ("f1", "pr_auc", "precision_at_recall_0.9", "precision", "recall")
    }


def _labels_to(curves: list[list[dict[str, Any]]], target: float) -> int | None:
    """Median over seeds of the labels first reaching ``target`` F1; None when most never do."""
    reached = []
    for curve in curves:
        hit = next((c["labels"] for c in curve if (c["f1"] or 0) >= target), None)
        reached.append(hit)
    got = [r for r in reached if r is not None]
    if len(got) * 2 <= len(reached):
        return None
    return int(np.median([r if r is not None else np.inf for r in reached]))


def _summarise(
    curves: dict[str, list[list[dict[str, Any]]]],
    *,
    config: SimulationConfig,
    n_pool: int,
    n_test: int,
    test_positives: int,
    seconds: float,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "config": {**config.__dict__, "strategies": list(config.strategies)},
        "pool": n_pool,
        "test": n_test,
        "test_positives": test_positives,
        "seconds": round(seconds, 1),
        "strategies": {},
    }
    for name, per_seed in curves.items():
        labels = [c["labels"] for c in per_seed[0]]
        f1 = np.asarray([[c["f1"] or 0 for c in s] for s in per_seed])
        pr = np.asarray([[c["pr_auc"] or 0 for c in s] for s in per_seed])
        out["strategies"][name] = {
            "labels_to_f1": {"0.8": _labels_to(per_seed, 0.8), "0.9": _labels_to(per_seed, 0.9)},
            "final_pr_auc": float(pr[:, -1].mean()),
            "final_f1": float(f1[:, -1].mean()),
            "curve": {
                "labels": labels,
                "f1_mean": f1.mean(0).tolist(),
                "f1_std": f1.std(0).tolist(),
                "pr_auc_mean": pr.mean(0).tolist(),
                "pr_auc_std": pr.std(0).tolist(),
            },
            "per_seed": per_seed,
        }
    return out


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, s in results["strategies"].items():
        c = s["curve"]
        x = np.asarray(c["labels"])
        for ax, key in zip(axes, ("f1", "pr_auc"), strict=True):
            m, sd = np.asarray(c[f"{key}_mean"]), np.asarray(c[f"{key}_std"])
            ax.plot(x, m, label=name)
            ax.fill_between(x, m - sd, m + sd, alpha=0.2)
    for ax, title in zip(axes, ("test F1", "test PR-AUC"), strict=True):
        ax.set_xlabel("labels")
        ax.set_ylabel(title)
        ax.set_ylim(0, 1)
        ax.set_title(f"{title} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
