"""Does scoring a bounded candidate set per round cost label efficiency?

    python bench/candidates_vs_full.py CANDIDATES_RESULTS FULL_POOL_RESULTS [--strategy hybrid]
                                       [--at 200,400] [--out bench/results/candidates_vs_full.json]

Reads two ``results.json`` of ``artifact-loop simulate`` on the same dataset with the same
seeds, one with ``--candidates N`` and one with ``--candidates 0`` (every unlabelled patch
scored each round), and compares the strategy's test PR-AUC at the given label counts: mean and
standard deviation over seeds, the difference, and whether the candidate run is at most one
standard deviation (of the full-pool run) worse.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def at(results: dict[str, Any], strategy: str, labels: int) -> list[float]:
    """Test PR-AUC of every seed at ``labels`` labels."""
    values = []
    for curve in results["strategies"][strategy]["per_seed"]:
        point = next((p for p in curve if p["labels"] == labels), None)
        if point is None:
            raise SystemExit(f"{strategy} has no point at {labels} labels")
        values.append(float(point["pr_auc"]))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidates", type=Path)
    parser.add_argument("full_pool", type=Path)
    parser.add_argument("--strategy", default="hybrid")
    parser.add_argument("--at", default="200,400")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "candidates_vs_full.json"
    )
    args = parser.parse_args()
    bounded = json.loads(args.candidates.read_text())
    full = json.loads(args.full_pool.read_text())
    rows = []
    for labels in (int(v) for v in args.at.split(",")):
        a, b = at(bounded, args.strategy, labels), at(full, args.strategy, labels)
        diff = float(np.mean(a) - np.mean(b))
        rows.append(
            {
                "labels": labels,
                "candidates_mean": round(float(np.mean(a)), 4),
                "candidates_std": round(float(np.std(a)), 4),
                "full_pool_mean": round(float(np.mean(b)), 4),
                "full_pool_std": round(float(np.std(b)), 4),
                "difference": round(diff, 4),
                "not_worse_than_one_std": bool(abs(diff) <= float(np.std(b)) or diff >= 0),
            }
        )
        r = rows[-1]
        print(
            f"{args.strategy} at {labels} labels: candidates {r['candidates_mean']:.3f} ± "
            f"{r['candidates_std']:.3f}, full pool {r['full_pool_mean']:.3f} ± "
            f"{r['full_pool_std']:.3f} (difference {diff:+.3f}: "
            f"{'not worse than' if r['not_worse_than_one_std'] else 'worse than'} one std)"
        )
    out = {
        "strategy": args.strategy,
        "candidates_per_round": bounded["config"]["candidates"],
        "full_pool_config_candidates": full["config"]["candidates"],
        "pool": bounded["pool"],
        "seeds": bounded["config"]["seeds"],
        "test": bounded["test"],
        "test_positives": bounded["test_positives"],
        "at": rows,
        "minutes": {
            "candidates_run": round(bounded["seconds"] / 60, 1),
            "full_pool_run": round(full["seconds"] / 60, 1),
        },
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
