"""Summaries and plots of a simulation: learning curves per strategy, mean and spread over
seeds, labels to reach an F1, bootstrap intervals of the final test PR-AUC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def write_partial(
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


def labels_to(curves: list[list[dict[str, Any]]], target: float) -> int | None:
    """Median over seeds of the labels first reaching ``target`` F1; None when most never do."""
    reached = []
    for curve in curves:
        hit = next((c["labels"] for c in curve if (c["f1"] or 0) >= target), None)
        reached.append(hit)
    got = [r for r in reached if r is not None]
    if len(got) * 2 <= len(reached):
        return None
    return int(np.median([r if r is not None else np.inf for r in reached]))


def summarise(
    curves: dict[str, list[list[dict[str, Any]]]],
    *,
    config: Any,
    workers: int,
    n_pool: int,
    n_test: int,
    test_positives: int,
    seconds: float,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "config": {**config.__dict__, "strategies": list(config.strategies)},
        "workers": workers,
        "pool": n_pool,
        "test": n_test,
        "test_positives": test_positives,
        "seconds": round(seconds, 1),
        "strategies": {},
    }
    for name, per_seed in curves.items():
        labels = [c["labels"] for c in per_seed[0]]
        rounds = min(len(s) for s in per_seed)  # a curve may end early: the pool ran out
        per_seed_cut = [s[:rounds] for s in per_seed]
        f1 = np.asarray([[c["f1"] or 0 for c in s] for s in per_seed_cut])
        pr = np.asarray([[c["pr_auc"] or 0 for c in s] for s in per_seed_cut])
        p90 = np.asarray([[c.get("precision_at_recall_0.9") or 0 for c in s] for s in per_seed_cut])
        out["strategies"][name] = {
            "labels_to_f1": {"0.8": labels_to(per_seed, 0.8), "0.9": labels_to(per_seed, 0.9)},
            "final_pr_auc": float(pr[:, -1].mean()),
            "final_f1": float(f1[:, -1].mean()),
            "curve": {
                "labels": labels[:rounds],
                "f1_mean": f1.mean(0).tolist(),
                "f1_std": f1.std(0).tolist(),
                "pr_auc_mean": pr.mean(0).tolist(),
                "pr_auc_std": pr.std(0).tolist(),
                "precision_at_recall_0.9_mean": p90.mean(0).tolist(),
                "precision_at_recall_0.9_std": p90.std(0).tolist(),
                # per round, the median over seeds of each end of the test PR-AUC's
                # bootstrap 95% interval (the test set's own sampling error)
                "pr_auc_interval_median": [
                    _median_interval([s[r].get("pr_auc_interval") for s in per_seed_cut])
                    for r in range(rounds)
                ],
            },
            "per_seed": per_seed,
        }
    return out


def _median_interval(intervals: list[Any]) -> list[float] | None:
    known = [i for i in intervals if i and i[0] is not None and i[1] is not None]
    if not known:
        return None
    lo, hi = np.median(np.asarray(known, dtype=np.float64), axis=0)
    return [round(float(lo), 4), round(float(hi), 4)]


def plot(results: dict[str, Any], path: Path) -> None:
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
