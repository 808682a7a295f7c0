"""Several annotators, one of them wrong on a share of their labels: does the loop still learn?

    python bench/annotator_noise.py DATASET --out bench/results/annotator_noise/medium
    python bench/annotator_noise.py DATASET --out ... --only noisy-consensus   # one run
    python bench/annotator_noise.py DATASET --out ... --summarise              # table only
    python bench/annotator_noise.py DATASET --real cremi-c --artifacts-per-section 0.6 --out ...

Three ``simulate`` runs of the default strategy through the service's own steps, the same
seeds and budget, with three simulated annotators sharing the work:

- ``noise-free``: every annotator right (``a:0,b:0,c:0``);
- ``noisy-consensus``: one annotator flips a share of their labels (``a:0,b:0,c:0.2``), the
  service trains on the consensus (its default);
- ``noisy-raw``: the same annotators, the service trains on each patch's latest label.

The summary gives the test PR-AUC at the budget (mean, std and the median bootstrap interval
over seeds, with the test positives), each noisy run's difference from the noise-free one,
whether the noisy annotator had the lowest estimated reliability once they had given their
first 100 labels (per seed), and, where the runs recorded it, how many flipped labels the
label-error list recovered and at what precision.

``--real VOLUME`` builds DATASET first where it does not exist yet: the real-tissue volume
(``server.sim.real_tissue.VOLUMES``, fetched with pip) with the synthetic generator's artifacts
painted in as the real-tissue benchmark paints them (its paint seed, ``--artifacts-per-section``
of them per section; 0.2 is that benchmark's usual share, 0.6 gives cremi-c over 30 test
artifact patches).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.acquisition import registry
from server.sim.crowd import SWEEP, parse_annotators, passes, recovery, recovery_at
from server.sim.replay import ORACLE
from server.sim.simulate import SimulationConfig, quick_config, run_simulation

RUNS: dict[str, dict[str, Any]] = {
    "noise-free": {"noisy": False, "label_aggregation": "consensus"},
    "noisy-consensus": {"noisy": True, "label_aggregation": "consensus"},
    "noisy-raw": {"noisy": True, "label_aggregation": "latest"},
}
# large per-patch lists a run keeps for other benchmarks; not needed here
HEAVY = ("test_origins", "test_scores")


def run(dataset: Path, out: Path, name: str, args: argparse.Namespace) -> None:
    spec = RUNS[name]
    annotators = parse_annotators(args.annotators, reserved=ORACLE)
    if not spec["noisy"]:
        annotators = tuple(replace(a, error_rate=0.0) for a in annotators)
    base = quick_config((args.strategy,)) if args.quick else SimulationConfig()
    config = replace(
        base,
        strategies=(args.strategy,),
        budget=args.budget,
        seeds=args.seeds,
        first_seed=args.first_seed,
        annotators=annotators,
        label_aggregation=spec["label_aggregation"],
    )

    def progress(message: str, done: int, total: int) -> None:
        print(f"[{name}] {done}/{total} {message}", flush=True)

    results = run_simulation(dataset, out_dir=out / name, config=config, progress=progress)
    for strategy in results["strategies"].values():
        for curve in strategy["per_seed"]:
            for row in curve:
                for key in HEAVY:
                    row.pop(key, None)
    (out / name / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def at_budget(results: dict[str, Any], budget: int) -> dict[str, Any]:
    (strategy,) = results["strategies"].values()
    curve = strategy["curve"]
    i = curve["labels"].index(budget)
    per_seed = [seed[i]["pr_auc"] or 0.0 for seed in strategy["per_seed"]]
    return {
        "labels": budget,
        "pr_auc_mean": round(float(np.mean(per_seed)), 4),
        "pr_auc_std": round(float(np.std(per_seed)), 4),
        "pr_auc_per_seed": [round(v, 4) for v in per_seed],
        "pr_auc_interval_median": curve["pr_auc_interval_median"][i],
        "test_positives": results["test_positives"],
        "test_patches": results["test"],
    }


def label_errors(results: dict[str, Any]) -> dict[str, Any] | None:
    """The label-error list at the end of each seed: flipped labels recovered, precision."""
    (strategy,) = results["strategies"].values()
    found = [seed[-1].get("label_errors") for seed in strategy["per_seed"]]
    if not all(found):
        return None
    recall = [f["recall"] for f in found]
    precision = [f["precision"] for f in found]
    return {
        "per_seed": found,
        "recall_min": min(r for r in recall if r is not None) if any(recall) else None,
        "precision_min": min(p for p in precision if p is not None) if any(precision) else None,
    }


def threshold_sweep(results: dict[str, Any]) -> dict[str, Any] | None:
    """What the label-error list would have held at the end of each seed with another
    suspect threshold, read from every checked label's recorded P(wrong): per threshold, the
    recall and precision per seed and in how many seeds both reach the wanted figures; and
    with as many suspects as the consensus expects wrong labels (the sum of P(wrong)). Read
    after the run, so the re-label tasks are those of the threshold the run used."""
    (strategy,) = results["strategies"].values()
    ends = [seed[-1] for seed in strategy["per_seed"]]
    if not all("label_scores" in row for row in ends):
        return None
    rows = []
    for at in SWEEP:
        per_seed = [recovery_at(row["label_scores"], row["flipped"], at=at) for row in ends]
        hits = sum(f for row in ends for wrong, f in row["label_scores"] if wrong >= at)
        flagged = sum(r["suspects"] for r in per_seed)
        flipped = sum(r["flipped"] for r in per_seed)
        rows.append(
            {
                "suspect_at": at,
                "seeds_passing": sum(passes(r) for r in per_seed),
                "pooled_recall": round(hits / flipped, 4) if flipped else None,
                "pooled_precision": round(hits / flagged, 4) if flagged else None,
                "per_seed": per_seed,
            }
        )
    expected = []
    for row in ends:
        ranked = sorted(row["label_scores"], key=lambda pair: -pair[0])
        k = round(sum(wrong for wrong, _ in ranked))
        expected.append(recovery([bool(f) for _, f in ranked[:k]], row["flipped"]))
    return {"thresholds": rows, "top_expected": expected}


def lowest_at_end(results: dict[str, Any]) -> dict[str, Any]:
    """Per seed, after the last round: the noisy annotators' labels and whether each ranks
    below every right one (for seeds where they never reached 100 labels); None where nobody
    is noisy or a reliability is not estimated."""
    (strategy,) = results["strategies"].values()
    out: dict[str, Any] = {}
    first = results["config"].get("first_seed", 0)
    for seed, curve in enumerate(strategy["per_seed"], start=first):
        crowd = curve[-1].get("annotators") or {}
        noisy = {n: a for n, a in crowd.items() if a["error_rate"] > 0}
        right = [a["reliability"] for a in crowd.values() if a["error_rate"] == 0]
        known = all(a["reliability"] is not None for a in crowd.values())
        out[str(seed)] = (
            {
                name: {"labels": a["labels"], "lowest": a["reliability"] < min(right)}
                for name, a in noisy.items()
            }
            if noisy and right and known
            else None
        )
    return out


def summarise(out: Path, budget: int) -> dict[str, Any]:
    summary: dict[str, Any] = {"budget": budget, "runs": {}}
    found = {n: out / n / "results.json" for n in RUNS if (out / n / "results.json").exists()}
    for name, path in found.items():
        results = json.loads(path.read_text())
        row = at_budget(results, budget)
        row["annotators"] = results["config"]["annotators"]
        row["label_aggregation"] = results["config"]["label_aggregation"]
        rankings = results.get("reliability_ranking") or {}
        # None: the noisy annotator never gave 100 labels in that seed
        row["noisy_lowest_after_first_labels"] = {
            k: v["lowest"] if v else None for k, v in rankings.items()
        }
        row["noisy_lowest_at_end"] = lowest_at_end(results)
        row["label_errors"] = label_errors(results)
        if (sweep := threshold_sweep(results)) is not None:
            row["label_error_thresholds"] = sweep
        row["seconds"] = results["seconds"]
        summary["runs"][name] = row
    clean = summary["runs"].get("noise-free")
    for name, row in summary["runs"].items():
        if clean is not None and name != "noise-free":
            row["difference_from_noise_free"] = round(row["pr_auc_mean"] - clean["pr_auc_mean"], 4)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def build_real(name: str, dataset: Path, *, per_section: float, cache: Path) -> None:
    """A real-tissue volume with the generator's artifacts painted in, as
    ``bench/real_tissue.py`` builds its datasets (the volume's paint seed)."""
    from server.sim.real_tissue import VOLUMES, fetch_volume, make_real_dataset

    if name not in VOLUMES:
        sys.exit(f"unknown volume {name!r}; known: {', '.join(VOLUMES)}")
    volume = VOLUMES[name]
    built = make_real_dataset(
        fetch_volume(volume, cache, say=print), dataset, seed=volume.paint_seed,
        artifacts_per_section=per_section, voxel_size=volume.voxel_size,
    )  # fmt: skip
    print(f"{dataset}: {built.n_patches} patches, {built.n_artifact_patches} artifact patches")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--annotators", default="a:0,b:0,c:0.2")
    parser.add_argument("--strategy", default=registry.DEFAULT)
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="fresh seeds to confirm a choice made on others"
    )
    parser.add_argument("--only", choices=list(RUNS), action="append")
    parser.add_argument("--summarise", action="store_true", help="only rebuild the summary")
    parser.add_argument("--quick", action="store_true", help="tiny networks: a smoke run")
    parser.add_argument("--real", help="build DATASET from this real-tissue volume if missing")
    parser.add_argument("--artifacts-per-section", type=float, default=0.2)
    parser.add_argument("--cache", type=Path, default=Path(".real_tissue/downloads"))
    args = parser.parse_args()
    if args.real and not args.dataset.exists():
        build_real(
            args.real, args.dataset, per_section=args.artifacts_per_section, cache=args.cache
        )
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summarise:
        for name in args.only or list(RUNS):
            run(args.dataset, args.out, name, args)
    summary = summarise(args.out, args.budget)
    for name, row in summary["runs"].items():
        lowest = row["noisy_lowest_after_first_labels"]
        at_end = sum(
            bool(v) and all(a["lowest"] for a in v.values())
            for v in row["noisy_lowest_at_end"].values()
        )
        errors = row["label_errors"] or {}
        print(
            f"{name:16s} PR-AUC@{row['labels']} {row['pr_auc_mean']:.3f} ± {row['pr_auc_std']:.3f}"
            f" (interval {row['pr_auc_interval_median']}, {row['test_positives']} test positives)"
            f" diff {row.get('difference_from_noise_free', 0):+.3f}"
            f" noisy lowest in {sum(v is True for v in lowest.values())} of {len(lowest)} seeds"
            f" ({sum(v is None for v in lowest.values())} never reached 100 labels;"
            f" at the end in {at_end} of {len(lowest)})"
            f" label-error recall>={errors.get('recall_min')} precision>={errors.get('precision_min')}"
        )


if __name__ == "__main__":
    main()
