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
        "config": {
            **config.__dict__,
            "strategies": list(config.strategies),
            "annotators": [[a.name, a.error_rate] for a in config.annotators],
        },
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
    # matplotlib costs seconds at start-up; only the plots need it
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


def per_budget(results: dict[str, Any]) -> dict[str, Any]:
    """Test PR-AUC and precision at recall 0.9 (mean, std over seeds) per strategy and budget."""
    out: dict[str, Any] = {}
    for name, s in results["strategies"].items():
        c = s["curve"]
        out[name] = {
            str(n): {
                "pr_auc": [round(c["pr_auc_mean"][i], 3), round(c["pr_auc_std"][i], 3)],
                "precision_at_recall_0.9": [
                    round(c["precision_at_recall_0.9_mean"][i], 3),
                    round(c["precision_at_recall_0.9_std"][i], 3),
                ],
                "pr_auc_interval_median": c["pr_auc_interval_median"][i],
            }
            for i, n in enumerate(c["labels"])
        }
    return out


def real_tissue_table(
    summary: dict[str, Any], budgets: tuple[int, ...] = (50, 100, 200, 300)
) -> str:
    """The README's table: test PR-AUC (mean ± std over seeds) per budget, and precision at
    recall 0.9 and the PR-AUC's bootstrap interval (median over seeds) at 200 labels."""
    head = " | ".join(f"PR-AUC @{b}" for b in budgets)
    lines = [
        f"| volume / prevalence | test patches: all / with artifacts / painted artifacts | "
        f"seeds | strategy | {head} | precision @ recall 0.9, 200 labels | "
        "PR-AUC 95% interval, 200 labels (median over seeds of each end) |",
        "| " + " | ".join(["---"] * (len(budgets) + 6)) + " |",
    ]
    for run_name, run in summary["runs"].items():
        for name, per in run["per_budget"].items():
            cells = []
            for b in budgets:
                v = per.get(str(b))
                cells.append(f"{v['pr_auc'][0]:.2f} ± {v['pr_auc'][1]:.2f}" if v else "-")
            at200 = per.get("200") or {}
            p90 = at200.get("precision_at_recall_0.9")
            interval = at200.get("pr_auc_interval_median")
            lines.append(
                f"| {run_name} | {run['test']} / {run['test_positives']} / "
                f"{run['dataset'].get('test_artifacts', '?')} | {run['seeds']} | "
                f"{name} | "
                + " | ".join(cells)
                + " | "
                + (f"{p90[0]:.2f} ± {p90[1]:.2f}" if p90 else "-")
                + " | "
                + (f"{interval[0]:.2f}-{interval[1]:.2f}" if interval else "-")
                + " |"
            )
    return "\n".join(lines)
