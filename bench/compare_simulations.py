"""Two runs of ``artifact-loop simulate`` on the same dataset and seeds, compared point by point.

    python bench/compare_simulations.py A_RESULTS B_RESULTS [--strategies hybrid,uncertainty]
                                        [--at 200,400] --out bench/results/NAME.json

For each strategy and label count: test PR-AUC mean and standard deviation over seeds of run A
(the one under question: a change, a bounded candidate set) and of run B (the reference), the
difference, whether A is within one standard deviation (B's) of B, and whether it is at most
one standard deviation worse. Used for:

* a change that must not change behaviour (the acquisition registry against
  ``bench/results/simulation``: ``--strategies hybrid,uncertainty``);
* scoring a bounded candidate set per round against every unlabelled patch
  (``--candidates 3000`` against ``--candidates 0``, ``--strategies hybrid``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def at(results: dict[str, Any], strategy: str, labels: int) -> list[float]:
    """Test PR-AUC of every seed at ``labels`` labels."""
    if strategy not in results["strategies"]:
        raise SystemExit(f"{strategy} is not in the results ({', '.join(results['strategies'])})")
    values = []
    for curve in results["strategies"][strategy]["per_seed"]:
        point = next((p for p in curve if p["labels"] == labels), None)
        if point is None:
            raise SystemExit(f"{strategy} has no point at {labels} labels")
        values.append(float(point["pr_auc"]))
    return values


def compare(a: dict[str, Any], b: dict[str, Any], strategy: str, labels: int) -> dict[str, Any]:
    va, vb = at(a, strategy, labels), at(b, strategy, labels)
    diff = float(np.mean(va) - np.mean(vb))
    std_b = float(np.std(vb))
    return {
        "strategy": strategy,
        "labels": labels,
        "seeds": [len(va), len(vb)],
        "a_mean": round(float(np.mean(va)), 4),
        "a_std": round(float(np.std(va)), 4),
        "b_mean": round(float(np.mean(vb)), 4),
        "b_std": round(std_b, 4),
        "difference": round(diff, 4),
        "within_one_std": bool(abs(diff) <= std_b),
        "not_worse_than_one_std": bool(diff >= -std_b),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="results.json of the run under question")
    parser.add_argument("b", type=Path, help="results.json of the reference run")
    parser.add_argument("--strategies", default="hybrid")
    parser.add_argument("--at", default="200,400")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    a, b = json.loads(args.a.read_text()), json.loads(args.b.read_text())
    rows = [
        compare(a, b, strategy.strip(), int(labels))
        for strategy in args.strategies.split(",")
        for labels in args.at.split(",")
    ]
    for r in rows:
        verdict = "within" if r["within_one_std"] else "outside"
        print(
            f"{r['strategy']} at {r['labels']} labels: A {r['a_mean']:.3f} ± {r['a_std']:.3f}, "
            f"B {r['b_mean']:.3f} ± {r['b_std']:.3f} (difference {r['difference']:+.3f}: "
            f"{verdict} one std of B)"
        )
    out = {
        "a": {"results": str(args.a), "candidates": a["config"].get("candidates")},
        "b": {"results": str(args.b), "candidates": b["config"].get("candidates")},
        "pool": a["pool"],
        "test": a["test"],
        "test_positives": a["test_positives"],
        "at": rows,
        "minutes": {"a": round(_seconds(a) / 60, 1), "b": round(_seconds(b) / 60, 1)},
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


def _seconds(results: dict[str, Any]) -> float:
    seconds = results["seconds"]  # merged results keep each source's time
    return float(sum(seconds.values()) if isinstance(seconds, dict) else seconds)


if __name__ == "__main__":
    main()
