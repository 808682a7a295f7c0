"""Put the strategies of several ``artifact-loop simulate`` runs on the same dataset into one
``results.json`` and one learning-curve plot.

    python bench/merge_simulations.py RUN_A/results.json RUN_B/results.json ... --out DIR

Each strategy's curves are independent of the others' (own seeds, own labels), so a strategy
rerun alone can join the rest. The runs must agree on the dataset (pool, test set, test
positives) and on every setting but the strategies; a strategy found in two runs is taken from
the later one on the command line. ``sources`` records which run each strategy came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from server.sim.report import plot

SAME = ("pool", "test", "test_positives")


def merge(runs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The runs' strategies in one result; ``runs`` holds (name, results) pairs."""
    first_name, first = runs[0]
    settings = {k: v for k, v in first["config"].items() if k != "strategies"}
    merged: dict[str, Any] = {
        **{k: first[k] for k in ("config", "workers", *SAME)},
        "seconds": {},
        "strategies": {},
        "jobs": {},
        "sources": {},
    }
    for name, results in runs:
        for key in SAME:
            if results[key] != first[key]:
                raise SystemExit(f"{name}: {key} {results[key]} differs from {first_name}'s")
        other = {k: v for k, v in results["config"].items() if k != "strategies"}
        if other != settings:
            changed = sorted(
                k for k in settings.keys() | other.keys() if settings.get(k) != other.get(k)
            )
            raise SystemExit(f"{name}: settings {changed} differ from {first_name}'s")
        merged["seconds"][name] = results["seconds"]
        for strategy, summary in results["strategies"].items():
            merged["strategies"][strategy] = summary
            merged["sources"][strategy] = name
        for key, jobs in results.get("jobs", {}).items():
            if key.split("/")[0] in results["strategies"]:
                merged["jobs"][key] = jobs
    merged["config"] = {**settings, "strategies": list(merged["strategies"])}
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="results.json of each run")
    parser.add_argument("--out", type=Path, required=True, help="folder for the merged run")
    args = parser.parse_args()
    runs = [(str(path), json.loads(path.read_text())) for path in args.runs]
    merged = merge(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(merged, indent=1) + "\n")
    plot(merged, args.out / "learning_curves.png")
    for strategy, summary in merged["strategies"].items():
        curve = summary["curve"]
        points = {
            n: f"{m:.3f} ± {s:.3f}"
            for n, m, s in zip(
                curve["labels"], curve["pr_auc_mean"], curve["pr_auc_std"], strict=True
            )
            if n in (200, 400)
        }
        print(f"{strategy:12s} test PR-AUC {points}  from {merged['sources'][strategy]}")
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
