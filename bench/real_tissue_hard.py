"""The hard real-tissue benchmark: many patch-sized artifacts from two independent painters in
real EM volumes, the product against the baselines, through ``simulate`` (the service's own
steps), every painting its own seed.

    python bench/real_tissue_hard.py                       # every volume, both painters, 10 seeds
    python bench/real_tissue_hard.py --seeds 2 --out /tmp/hard          # a quick look
    python bench/real_tissue_hard.py --table                 # the table of --out's summary

For each volume (``server.sim.real_tissue.VOLUMES``, fetched with pip as the real-tissue
benchmark does) and each painter (``generator``: the synthetic generator's kinds; ``msem``:
:mod:`server.sim.msem_artifacts`, written apart from it), each seed paints the volume anew
(artifacts about one patch in size, kinds balanced, a third faint, 2-7% of patches), keeps the
volume's real defects in the held-out sections (every third), and runs ``simulate`` once: the
product's ``hybrid`` and ``random``, the product with every pool patch labelled, and the
baselines (hand features or the frozen autoencoder's embedding with a logistic regression,
random or uncertainty sampling; hand features with every pool patch labelled, logistic
regression or gradient boosting). ``<out>/<volume>/<painter>/seed-<n>/`` holds the curves
(``results.json``), ``dataset.json`` and ``report.json``; ``<out>/summary.json`` the means
over seeds with 95% bootstrap intervals (over seeds), the test sizes they rest on, recall per
kind at each detector's threshold, and the real defects apart. A seed already in ``--out``
runs only the strategies its report lacks (``--fresh`` runs it all again).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.acquisition import registry
from server.settings import Settings
from server.sim.hard_report import combine, kind_table, painting_report, table
from server.sim.hard_tissue import (
    PAINTER_NAMES,
    defects_into_test,
    describe_hard,
    fetch_with_defects,
    make_hard_dataset,
)
from server.sim.real_tissue import VOLUMES
from server.sim.simulate import FULLY_LABELLED, SimulationConfig, run_simulation
from server.sim.synth import PATCH

STRATEGIES = (
    registry.DEFAULT, registry.RANDOM, FULLY_LABELLED, "features-random", "features-uncertainty",
    "embedding-random", "embedding-uncertainty", "features-all-logistic", "features-all-gbm",
)  # fmt: skip
TEST_EVERY = 3  # every third section held out: a third of the patches are test patches
# artifacts per section of 16 patches of 140 px (a 560 px section), for 4-6% artifact patches:
# the generator's artifacts cover more patches each than the mSEM painter's
DENSITY = {"generator": 0.45, "msem": 0.65}
DENSITY_PATCHES = 16


def density(painter: str, sections: np.ndarray) -> float:
    """Artifacts per section for ``sections`` (``(z, y, x)``): :data:`DENSITY` scaled to the
    sections' patches, so that larger sections get as many artifacts per patch."""
    patches = (sections.shape[1] // PATCH) * (sections.shape[2] // PATCH)
    return DENSITY[painter] * patches / DENSITY_PATCHES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--volumes", default=",".join(VOLUMES))
    ap.add_argument("--painters", default=",".join(PAINTER_NAMES))
    ap.add_argument("--seeds", type=int, default=10, help="paintings per volume and painter")
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--out", type=Path, default=Path("bench/results/real_tissue_hard"))
    ap.add_argument("--work", type=Path, default=Path(".real_tissue/hard"))
    ap.add_argument("--cache", type=Path, default=Path(".real_tissue/downloads"))
    ap.add_argument("--workers", type=int, default=0, help="curves side by side (0: per core)")
    ap.add_argument("--fresh", action="store_true", help="run seeds already in --out again")
    ap.add_argument("--table", action="store_true", help="print --out's table, run nothing")
    ap.add_argument(
        "--collect",
        action="store_true",
        help="rebuild summary.json from the seeds in --out, run none (runs side by side)",
    )
    args = ap.parse_args()
    summary_path = args.out / "summary.json"
    if args.table:
        saved = json.loads(summary_path.read_text())
        print(table(saved) + "\n" + kind_table(saved))
        return
    defaults = Settings.model_fields
    config = replace(
        SimulationConfig(),
        strategies=tuple(s.strip() for s in args.strategies.split(",") if s.strip()),
        budget=args.budget, batch=args.batch, seeds=1, test_every=TEST_EVERY,
        workers=args.workers,
        # the service's own pretraining (the real-tissue benchmark pretrains four times longer)
        pretrain_patches=defaults["pretrain_patches"].default,
        pretrain_epochs=defaults["pretrain_epochs"].default,
    )  # fmt: skip
    summary: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "config": {**asdict(config), "density": DENSITY, "paintings": args.seeds},
        "volumes": {},
        "runs": {},
    }
    started = time.perf_counter()
    for name in [v.strip() for v in args.volumes.split(",") if v.strip()]:
        if name not in VOLUMES:
            sys.exit(f"unknown volume {name!r}; known: {', '.join(VOLUMES)}")
        volume = VOLUMES[name]
        summary["volumes"][name] = asdict(volume)
        sections, defects = fetch_with_defects(volume, args.cache, say=print)  # checksummed
        sections, defects = defects_into_test(sections, defects, test_every=TEST_EVERY)
        print(f"{name}: {volume.kind}, {sections.shape[0]} sections of {sections.shape[1:]} px")
        painters = [p.strip() for p in args.painters.split(",") if p.strip()]
        reports: dict[str, list[dict[str, Any]]] = {p: [] for p in painters}
        datasets: dict[str, list[dict[str, Any]]] = {p: [] for p in painters}
        for seed in range(args.seeds):  # seed by seed: an interrupted run has every painter
            for painter in painters:
                folder = args.out / name / painter / f"seed-{seed}"
                if args.collect and not (folder / "report.json").exists():
                    continue
                missing = config.strategies if args.fresh else still_to_run(folder, config)
                if missing and not args.collect:
                    run_painting(
                        sections, defects, folder=folder, work=args.work / f"{name}-{painter}",
                        painter=painter, seed=1000 * volume.paint_seed + seed,
                        config=replace(config, strategies=missing), voxel_size=volume.voxel_size,
                    )  # fmt: skip
                reports[painter].append(json.loads((folder / "report.json").read_text()))
                datasets[painter].append(json.loads((folder / "dataset.json").read_text()))
                summary["runs"][f"{name}/{painter}"] = {
                    "datasets": datasets[painter],
                    "report": combine(reports[painter]),
                }
                both = [r for p in painters for r in reports[p]]
                summary["runs"][f"{name}/both painters"] = {"report": combine(both)}
                summary["seconds"] = round(time.perf_counter() - started, 1)
                summary["load_average"] = os.getloadavg()
                write(summary_path, summary)
    print(table(summary) + "\n" + kind_table(summary))


def run_painting(
    sections: Any,
    defects: Any,
    *,
    folder: Path,
    work: Path,
    painter: str,
    seed: int,
    config: SimulationConfig,
    voxel_size: tuple[int, int, int],
) -> None:
    """Paint one seed's dataset, run ``simulate`` on it, and report on its test sections.
    Strategies added to a seed already run get the same painting and a ``simulate`` run of
    their own (``more-<n>/``: its autoencoder pretrained again), their report merged in."""
    dataset = work / f"seed-{seed}"
    shutil.rmtree(dataset, ignore_errors=True)
    built = make_hard_dataset(
        sections, dataset, painter=painter, seed=seed, defects=defects,
        artifacts_per_section=density(painter, sections), voxel_size=voxel_size,
        test_every=TEST_EVERY,
    )  # fmt: skip
    info = {"paint_seed": seed, **describe_hard(built)}
    print(
        f"  {painter} seed {seed}: {info['patches']} patches, {info['painted_patches']} painted "
        f"({info['prevalence_painted']:.1%}); test: {info['test_painted_patches']} patches "
        f"from {info['test_artifacts']} artifacts, {info['test_real_defect_patches']} real",
        flush=True,
    )
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "dataset.json", info)
    started = time.perf_counter()
    earlier = folder / "report.json"
    report = json.loads(earlier.read_text()) if earlier.exists() else {}
    out = folder / f"more-{len(list(folder.glob('more-*')))}" if report else folder
    results = run_simulation(dataset, out_dir=out, config=config, progress=_progress)
    report.update(painting_report(dataset, results))
    report_seconds = round(time.perf_counter() - started, 1)
    write(folder / "report.json", report)
    print(f"  seed {seed} done in {report_seconds} s", flush=True)
    shutil.rmtree(dataset, ignore_errors=True)


def still_to_run(folder: Path, config: SimulationConfig) -> tuple[str, ...]:
    """The strategies of ``config`` that ``folder``'s report does not have yet."""
    path = folder / "report.json"
    done = set(json.loads(path.read_text())) if path.exists() else set()
    return tuple(s for s in config.strategies if s not in done)


def write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _progress(message: str, done: int, total: int) -> None:
    print(f"    [{done}/{total}] {message}", flush=True)


if __name__ == "__main__":
    main()
