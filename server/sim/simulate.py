"""Offline active-learning benchmark, run through the service's own steps.

Any webKnossos dataset folder with a ``ground_truth.csv`` serves: the ground truth plays the
annotator. Whole z-sections are held out (every ``test_every``-th) and become the audit set,
labelled up front, so every version's audit metrics are its test metrics. The loop itself is
the product's: a SQLite store and an in-process job queue run the same registry, steps and
follow-ups as the workers (pretrain -> score -> propose -> label -> train -> score ->
propose ...). The autoencoder and its features are made once and shared by all curves; then,
per seed and strategy, a copy of that store replays rounds until the budget is spent.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import shutil
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from server.acquisition import registry
from server.errors import InvalidInput
from server.sim import report as rep
from server.sim.baselines import ALL_BASELINES, baseline_curves
from server.sim.crowd import Crowd, SimulatedAnnotator
from server.sim.prepare import prepare
from server.sim.replay import replay

# the product's classifier with every pool patch labelled at once (random order, one round)
FULLY_LABELLED = "product-all-labels"


def loop_strategy(curve: str) -> str | None:
    """How a curve's loop picks patches: its own strategy, a fully-labelled one at random;
    None for a baseline, which runs no loop."""
    if curve == FULLY_LABELLED:
        return registry.RANDOM
    return curve if curve in registry.REGISTRY else None


@dataclass(frozen=True)
class SimulationConfig:
    strategies: tuple[str, ...] = registry.names()
    budget: int = 400
    batch: int = 25
    seeds: int = 5
    first_seed: int = 0  # seeds first_seed, first_seed + 1, ...: fresh ones to confirm a choice
    test_every: int = 5  # every 5th section is a test section
    candidates: int = 3000  # unlabelled patches a classifier scores per round
    pretrain_patches: int = 8000
    pretrain_epochs: int = 8
    train_epochs: int = 60
    # quarter turns (then flips) averaged when the classifier scores a patch: the service's
    # default is 8; 4 keeps the 5-seed benchmark within about an hour on two CPU cores
    tta: int = 4
    workers: int = 0  # processes running curves side by side; 0 = one per CPU core
    layer: str = "color"
    # simulated annotators with error rates; none: the ground truth labels every proposal
    annotators: tuple[SimulatedAnnotator, ...] = ()
    # the dataset's label_aggregation setting ("consensus" or "latest"); None: the default
    label_aggregation: str | None = None
    # keep each curve's store (its database and models) under out_dir/.work after the run,
    # for analyses that replay a step on it (bench/label_error_views.py)
    keep_work: bool = False

    @property
    def seed_numbers(self) -> range:
        return range(self.first_seed, self.first_seed + self.seeds)


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


def _settings(
    folder: Path, config: SimulationConfig, *, seed: int, strategy: str, device: str
) -> Any:
    from server.settings import Settings

    return Settings(
        data_dir=folder,
        database_url=f"sqlite:///{folder / 'loop.sqlite'}",
        broker_url="filesystem://",
        retrain_every=1,  # the simulated annotator asks for a training after every batch
        # the audit set is the test set here: it must not choose which version picks labels
        hold_back_worse=False,
        batch_size=config.batch,
        candidates=config.candidates,
        pretrain_patches=config.pretrain_patches,
        pretrain_epochs=config.pretrain_epochs,
        train_epochs=config.train_epochs,
        tta=config.tta,
        # a baseline's curve never runs the loop; its settings name the default strategy
        acquisition=loop_strategy(strategy) or registry.DEFAULT,
        seed=seed,
        device=device,
        torch_threads=1 if config.workers != 1 else 0,
        wk_url=None,
    )


def run_simulation(
    dataset: Path,
    *,
    out_dir: Path,
    config: SimulationConfig,
    device: str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    known = (*registry.names(), *ALL_BASELINES, FULLY_LABELLED)
    if unknown := set(config.strategies) - set(known):
        raise InvalidInput(
            f"unknown strategies {', '.join(sorted(unknown))}; use {', '.join(known)}"
        )
    started = time.perf_counter()
    rounds = -(-config.budget // config.batch)
    product = [s for s in config.strategies if loop_strategy(s)]
    baselines = [s for s in config.strategies if s in ALL_BASELINES]
    runs = [(seed, strategy) for seed in config.seed_numbers for strategy in product]
    # curves that score candidates every round take longest: start them first
    runs.sort(key=lambda run: not registry.get(loop_strategy(run[1]) or "").needs_scores)
    total = len(runs) * rounds

    def setup(message: str) -> None:
        if progress is not None:
            progress(message, 0, total)

    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / ".work"
    shutil.rmtree(work, ignore_errors=True)
    template = work / "template"
    template.mkdir(parents=True)
    settings = _settings(template, config, seed=0, strategy=registry.DEFAULT, device=device)
    facts = prepare(
        dataset, template, config, settings, device=device, report=setup, features=bool(baselines)
    )
    finished: dict[tuple[int, str], list[dict[str, Any]]] = {}
    jobs: dict[str, dict[str, int]] = {}
    rankings: dict[str, Any] = {}

    def record(seed: int, strategy: str, outcome: dict[str, Any]) -> None:
        finished[(seed, strategy)] = outcome["curve"]
        jobs[f"{strategy}/{seed}"] = outcome["jobs"]
        if "reliability_ranking" in outcome:
            rankings[f"{strategy}/{seed}"] = outcome["reliability_ranking"]
        rep.write_partial(out_dir, finished, seed=seed, strategy=strategy)

    try:
        if baselines:
            setup("baselines: hand-made features and a logistic regression")
            for seed, name, curve in baseline_curves(
                template / "baseline_features.npz", names=baselines, seeds=config.seed_numbers,
                budget=config.budget, batch=config.batch,
            ):  # fmt: skip
                record(seed, name, {"curve": curve, "jobs": {}})
        _run_curves(
            runs, work=work, config=config, device=device, record=record, progress=progress,
            total=total, pool=facts["pool"],
        )  # fmt: skip
    finally:
        if not config.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    curves = {
        name: [finished[(seed, name)] for seed in config.seed_numbers] for name in config.strategies
    }
    results = rep.summarise(
        curves,
        config=config,
        workers=_workers(config, len(runs)),
        n_pool=facts["pool"],
        n_test=facts["test"],
        test_positives=facts["test_positives"],
        seconds=time.perf_counter() - started,
    )
    results["jobs"] = jobs  # what the service's steps ran, per curve
    if config.annotators:  # is the noisiest annotator ranked lowest after their first labels?
        results["reliability_ranking"] = rankings
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.partial.json").unlink(missing_ok=True)
    rep.plot(results, out_dir / "learning_curves.png")
    return results


def _workers(config: SimulationConfig, runs: int) -> int:
    wanted = config.workers or os.cpu_count() or 1
    return max(1, min(wanted, runs))


def _run_curves(
    runs: list[tuple[int, str]],
    *,
    work: Path,
    config: SimulationConfig,
    device: str,
    record: Callable[[int, str, dict[str, Any]], None],
    progress: Callable[[str, int, int], None] | None,
    total: int,
    pool: int = 0,
) -> None:
    """Every (seed, strategy) curve, in worker processes of one torch thread each: these
    small networks train as fast on one core as on two, so two processes do twice the work."""
    n = _workers(config, len(runs))
    done = 0
    # the fully-labelled curve labels the whole pool in one round
    own = {FULLY_LABELLED: replace(config, budget=pool, batch=pool)} if pool else {}

    def tick(message: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(message, done, total)

    if n == 1:
        for seed, name in runs:
            record(seed, name, run_curve(work, own.get(name, config), seed, name, device, tick))
        return
    ctx = mp.get_context("spawn")  # no fork of a process that may hold torch threads
    messages = ctx.Queue()
    with ProcessPoolExecutor(
        max_workers=n, mp_context=ctx, initializer=_init_worker, initargs=(messages,)
    ) as executor:
        pending = {
            executor.submit(run_curve, work, own.get(n, config), s, n, device): (s, n)
            for s, n in runs
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


_MESSAGES: list[Any] = []


def _init_worker(messages: Any) -> None:
    import torch

    torch.set_num_threads(1)
    _MESSAGES[:] = [messages]


def run_curve(
    work: Path,
    config: SimulationConfig,
    seed: int,
    strategy: str,
    device: str,
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One strategy and seed: a copy of the shared store, then rounds of propose -> label
    -> train -> score until the budget is spent. Returns the curve and the jobs that ran."""
    folder = work / f"{strategy}-{seed}"
    template = work / "template"
    folder.mkdir(parents=True)
    shutil.copy(template / "loop.sqlite", folder / "loop.sqlite")
    (folder / "models").mkdir()
    for dataset_dir in (template / "models").iterdir():  # the autoencoder: shared, read-only
        (folder / "models" / dataset_dir.name).mkdir()
        for version in dataset_dir.iterdir():
            (folder / "models" / dataset_dir.name / version.name).symlink_to(version.resolve())
    settings = _settings(folder, config, seed=seed, strategy=strategy, device=device)

    def say(message: str) -> None:
        if report is not None:
            report(message)
        elif _MESSAGES:
            _MESSAGES[0].put(message)

    crowd = Crowd(config.annotators, seed) if config.annotators else None
    outcome = replay(
        settings, template=template, budget=config.budget, name=f"seed {seed} {strategy}",
        say=say, crowd=crowd,
    )  # fmt: skip
    if not config.keep_work:
        shutil.rmtree(folder, ignore_errors=True)
    return outcome
