"""Offline active-learning benchmark: acquisition strategies against random sampling.

Any webKnossos dataset folder with a ``ground_truth.csv`` (columns read by name: x, y, z, w,
h, label, type) serves as the oracle. Whole z-sections are held out as the test set, with
the dataset's real prevalence. The autoencoder is pretrained once on unlabelled pool patches
(shared by all seeds and strategies, so they differ only in what they label); then, per seed
and strategy, rounds of train -> score -> acquire -> label until the budget is spent.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.errors import InvalidInput
from server.labels.truth import load_truth

STRATEGIES = ("random", "uncertainty", "recon", "hybrid")


@dataclass(frozen=True)
class SimulationConfig:
    strategies: tuple[str, ...] = STRATEGIES
    budget: int = 400
    batch: int = 25
    seeds: int = 5
    test_every: int = 5  # every 5th section is a test section
    candidates: int = 3000  # pool patches scored per round (a fresh random subset each round)
    pretrain_patches: int = 8000
    pretrain_epochs: int = 8
    train_epochs: int = 60
    # quarter turns (then flips) averaged when the classifier scores a patch: the service
    # uses all 8; 4 keeps the 5-seed benchmark within an hour on two CPU cores
    tta: int = 4
    workers: int = 0  # processes running curves side by side; 0 = one per CPU core
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
        tta=2,
        workers=2,
    )


_SCORING = ("uncertainty", "hybrid")  # strategies that run the classifier on the pool


@dataclass(frozen=True)
class _Shared:
    """What every curve reads: files written once by the main process (the patches as a
    memory-mapped array, so worker processes share the page cache instead of copies)."""

    patches: Path  # .npy, float16 (n, 1, p, p), normalised
    arrays: Path  # .npz: truth, pool, test, recon_z, embed
    autoencoder: Path  # checkpoint
    config: SimulationConfig
    device: str


def run_simulation(
    dataset: Path,
    *,
    out_dir: Path,
    config: SimulationConfig,
    device: str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    import torch

    from models.checkpoint import save_checkpoint
    from models.networks import for_inference
    from models.training import pretrain_autoencoder, reconstruction_errors
    from server.pixels.source import PatchSource

    unknown = set(config.strategies) - set(STRATEGIES)
    if unknown:
        raise InvalidInput(
            f"unknown strategies {', '.join(sorted(unknown))}; use {', '.join(STRATEGIES)}"
        )
    started = time.perf_counter()
    rounds = -(-config.budget // config.batch)
    runs = [(seed, strategy) for seed in range(config.seeds) for strategy in config.strategies]
    # the curves that score candidates every round take longest: start them first, so the
    # last minutes are not one long curve on one core while the others idle
    runs.sort(key=lambda run: run[1] not in _SCORING)
    total = len(runs) * rounds

    def setup(message: str) -> None:
        if progress is not None:
            progress(message, 0, total)

    origins, truth = load_truth(dataset)
    sections = np.unique(origins[:, 2])
    test_sections = sections[:: config.test_every]
    test = np.isin(origins[:, 2], test_sections)
    pool = np.nonzero(~test)[0]
    test_idx = np.nonzero(test)[0]

    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / ".work"
    work.mkdir(exist_ok=True)
    with PatchSource.open(dataset, layer=config.layer, mag=1) as source:
        sample = source.read_patches(origins[np.linspace(0, len(origins) - 1, 64).astype(int)])
        mean, std = float(sample.mean()), float(sample.std()) or 1.0
        first = source.read_normalised(origins[:1], mean=mean, std=std)
        patches = np.lib.format.open_memmap(
            work / "patches.npy",
            mode="w+",
            dtype=np.float16,
            shape=(len(origins), *first.shape[1:]),
        )
        for s in range(0, len(origins), 512):
            setup(f"reading patches: {s:,} of {len(origins):,}")
            patches[s : s + 512] = source.read_normalised(origins[s : s + 512], mean=mean, std=std)
        patches.flush()
    rng = np.random.default_rng(0)
    ae_sample = np.sort(
        rng.choice(pool, size=min(config.pretrain_patches, len(pool)), replace=False)
    )
    ae = pretrain_autoencoder(
        np.asarray(patches[ae_sample], np.float32),
        epochs=config.pretrain_epochs,
        seed=0,
        device=device,
        progress=lambda _f, message, _r: setup(f"pretraining the autoencoder: {message}"),
    )
    setup("scoring reconstruction errors and embeddings of every patch")
    fast_ae = for_inference(ae.model)
    recon = reconstruction_errors(fast_ae, patches)  # reads the memory map batch by batch
    with torch.inference_mode():
        embed = np.concatenate(
            [
                fast_ae.embed(torch.from_numpy(np.asarray(patches[s : s + 512], np.float32)))
                .float()
                .cpu()
                .numpy()
                for s in range(0, len(patches), 512)
            ]
        )
    ref = ae.recon_reference
    recon_z = (recon - ref["median"]) / (1.4826 * max(ref["mad"], 1e-9))
    np.savez(
        work / "arrays.npz", truth=truth, pool=pool, test=test_idx, recon_z=recon_z, embed=embed
    )
    save_checkpoint(work / "autoencoder.pt", model=ae.model, norm=(mean, std))
    shared = _Shared(
        patches=work / "patches.npy",
        arrays=work / "arrays.npz",
        autoencoder=work / "autoencoder.pt",
        config=config,
        device=device,
    )

    finished: dict[tuple[int, str], list[dict[str, Any]]] = {}

    def record(seed: int, strategy: str, curve: list[dict[str, Any]]) -> None:
        finished[(seed, strategy)] = curve
        _write_partial(out_dir, finished, seed=seed, strategy=strategy)

    try:
        _run_curves(shared, runs, record=record, progress=progress, total=total)
    finally:
        for f in (shared.patches, shared.arrays, shared.autoencoder):
            f.unlink(missing_ok=True)
        work.rmdir()
    curves = {
        name: [finished[(seed, name)] for seed in range(config.seeds)] for name in config.strategies
    }
    results = _summarise(
        curves,
        config=config,
        n_pool=len(pool),
        n_test=len(test_idx),
        test_positives=int(truth[test_idx].sum()),
        seconds=time.perf_counter() - started,
    )
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.partial.json").unlink(missing_ok=True)
    _plot(results, out_dir / "learning_curves.png")
    return results


def _workers(config: SimulationConfig, runs: int) -> int:
    wanted = config.workers or os.cpu_count() or 1
    return max(1, min(wanted, runs))


def _run_curves(
    shared: _Shared,
    runs: list[tuple[int, str]],
    *,
    record: Callable[[int, str, list[dict[str, Any]]], None],
    progress: Callable[[str, int, int], None] | None,
    total: int,
) -> None:
    """Every (seed, strategy) curve, in worker processes of one thread each: these small
    networks train as fast on one core as on two, so two processes do twice the work."""
    n = _workers(shared.config, len(runs))
    done = 0

    def tick(message: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(message, done, total)

    if n == 1:
        _init_worker(shared, None, threads=0)
        for seed, strategy in runs:
            record(seed, strategy, _run_curve(seed, strategy, report=tick))
        return
    ctx = mp.get_context("spawn")  # no fork of a process that may hold torch threads
    messages = ctx.Queue()
    with ProcessPoolExecutor(
        max_workers=n, mp_context=ctx, initializer=_init_worker, initargs=(shared, messages, 1)
    ) as executor:
        pending = {
            executor.submit(_run_curve, seed, strategy): (seed, strategy) for seed, strategy in runs
        }
        while pending:
            finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            while True:
                try:
                    tick(messages.get_nowait())
                except queue.Empty:
                    break
            for future in finished:
                seed, strategy = pending.pop(future)
                record(seed, strategy, future.result())


_STATE: dict[str, Any] = {}


def _init_worker(shared: _Shared, messages: Any, threads: int) -> None:
    import torch

    from models.checkpoint import load_checkpoint

    if threads:
        torch.set_num_threads(threads)
    arrays = np.load(shared.arrays)
    ae, _ = load_checkpoint(shared.autoencoder)
    _STATE.clear()
    _STATE.update(
        shared=shared,
        messages=messages,
        patches=np.load(shared.patches, mmap_mode="r"),
        autoencoder=ae,
        **{k: arrays[k] for k in arrays.files},
    )


def _run_curve(
    seed: int, strategy: str, report: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Rounds of acquire -> label -> train -> test for one strategy and seed."""
    st = _STATE
    config: SimulationConfig = st["shared"].config
    truth, pool, test_idx = st["truth"], st["pool"], st["test"]
    rounds = -(-config.budget // config.batch)
    curve = []
    labelled = np.empty(0, dtype=np.int64)
    model = None
    for r in range(rounds):
        started = time.perf_counter()
        picks = _acquire(
            strategy,
            pool=pool,
            labelled=labelled,
            model=model,
            patches=st["patches"],
            recon_z=st["recon_z"],
            embed=st["embed"],
            batch=config.batch,
            candidates=config.candidates,
            seed=seed * 1000 + r,
        )
        labelled = np.concatenate([labelled, picks])
        model, row = _train_and_test(
            st["autoencoder"],
            st["patches"],
            truth,
            labelled,
            test_idx,
            seed=seed,
            config=config,
            device=st["shared"].device,
        )
        row.update(
            round=r + 1,
            labels=len(labelled),
            positives_found=int(truth[labelled].sum()),
            seconds=round(time.perf_counter() - started, 2),
        )
        curve.append(row)
        message = f"seed {seed} {strategy}: {len(labelled)} labels, test F1 {row['f1']:.2f}"
        if report is not None:
            report(message)
        elif st["messages"] is not None:
            st["messages"].put(message)
    return curve


def _write_partial(
    out_dir: Path,
    finished: dict[tuple[int, str], list[dict[str, Any]]],
    *,
    seed: int,
    strategy: str,
) -> None:
    """Curves finished so far, so an interrupted run keeps what it measured."""
    curves: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for (s, name), curve in sorted(finished.items()):
        curves.setdefault(name, {})[str(s)] = curve
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
    cand = np.sort(rng.choice(free, size=min(candidates, len(free)), replace=False))
    p = _predict(model, patches, cand)
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


def _predict(model: Any, patches: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Calibrated p(artifact) of ``patches[indices]``, read in slices (a memory map)."""
    from models.networks import for_inference
    from models.training import calibrated, predict_logits

    clf, temperature, tta = model
    fast = for_inference(clf)
    logits = np.concatenate(
        [
            predict_logits(fast, patches[indices[s : s + 512]], tta=tta)
            for s in range(0, len(indices), 512)
        ]
    )
    return calibrated(logits, temperature)


def _train_and_test(
    ae: Any,
    patches: np.ndarray,
    truth: np.ndarray,
    labelled: np.ndarray,
    test_idx: np.ndarray,
    *,
    seed: int,
    config: SimulationConfig,
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
    order = np.argsort(labelled)  # read the memory map in storage order
    x = np.empty((len(labelled), *patches.shape[1:]), np.float32)
    x[order] = patches[labelled[order]]
    result = train_classifier(
        x,
        y,
        autoencoder=ae,
        epochs=config.train_epochs,
        tta=config.tta,
        seed=seed,
        device=device,
    )
    model = (result.model, result.temperature, result.tta)
    report = classification_report(
        truth[test_idx], _predict(model, patches, test_idx), threshold=result.threshold
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
        "workers": _workers(config, sum(len(c) for c in curves.values())),
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
