"""Does a change leave the loop's choices as they were? Run the same small simulation on two
checkouts and compare the curves point by point.

    PYTHONPATH=OLD_CHECKOUT python bench/same_curves.py run OUT_OLD [CANDIDATES]
    PYTHONPATH=NEW_CHECKOUT python bench/same_curves.py run OUT_NEW [CANDIDATES]
    python bench/same_curves.py compare OUT_OLD OUT_NEW

``run`` writes a tiny synthetic dataset (once, beside OUT) and runs every registry strategy for
2 seeds, 100 labels in batches of 20, in one process (workers 1, so the run is deterministic);
CANDIDATES below the pool's 288 patches (say 100) has each classifier score a bounded
candidate set instead of the whole pool.
``compare`` prints, per strategy and seed, whether the test PR-AUC and the artifacts found
agree at every point; the exit code is 1 when anything differs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path


def run(out: Path, candidates: int | None = None) -> None:
    from server.sim.simulate import SimulationConfig, quick_config, run_simulation
    from server.sim.synth import make_synthetic_dataset

    dataset = out.parent / "same-curves-dataset"
    if not dataset.exists():
        make_synthetic_dataset(dataset, seed=2, shape=(840, 10), artifact_rate=3.0)
    config = replace(quick_config(SimulationConfig().strategies), workers=1, budget=100, seeds=2)
    run_simulation(dataset, out_dir=out, config=config, device="cpu")


def compare(a: Path, b: Path) -> bool:
    old = json.loads((a / "results.json").read_text())["strategies"]
    new = json.loads((b / "results.json").read_text())["strategies"]
    same = True
    for name in sorted(set(old) | set(new)):
        for seed, (x, y) in enumerate(
            zip(old[name]["per_seed"], new[name]["per_seed"], strict=True)
        ):
            keys = ("labels", "pr_auc", "positives_found")
            agree = [[r.get(k) for k in keys] for r in x] == [[r.get(k) for k in keys] for r in y]
            same &= agree
            print(f"{name:12s} seed {seed}: {'same' if agree else 'DIFFERENT'}")
    return same


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        run(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
    elif sys.argv[1:2] == ["compare"]:
        sys.exit(0 if compare(Path(sys.argv[2]), Path(sys.argv[3])) else 1)
    else:
        sys.exit(__doc__)
