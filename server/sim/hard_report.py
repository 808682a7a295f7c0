"""What the hard real-tissue benchmark reports: from each painting's curves and the painters'
ground truth, test PR-AUC and precision at recall 0.9 on the painted artifacts, recall per
kind at each detector's own threshold, and the real defects on a row of their own; then, over
paintings, means with 95% bootstrap intervals and the test sizes they rest on."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from models.metrics import average_precision, precision_at_recall
from server.sim.real_tissue import held_out_sections

BOOTSTRAP = 2000


def held_out_truth(dataset: Path) -> dict[str, Any]:
    """The held-out rows of a hard dataset: their corners, which artifact makes each an
    artifact patch (0 none, -1 a real defect), and each artifact's kind and faintness."""
    truth = json.loads((dataset / "truth.json").read_text())
    with (dataset / "ground_truth.csv").open(newline="") as fh:
        corners = np.asarray([[int(r["x"]), int(r["y"]), int(r["z"])] for r in csv.DictReader(fh)])
    depth = int(corners[:, 2].max()) + 1
    test = held_out_sections(depth, truth["test_every"])[corners[:, 2]]
    return {
        "corners": corners[test],
        "owner": np.asarray(truth["owner"])[test],
        "kind": {int(a["id"]): a["kind"] for a in truth["artifacts"]},
        "faint": {int(a["id"]): bool(a["faint"]) for a in truth["artifacts"]},
    }


def row_scores(row: dict[str, Any], truth: dict[str, Any]) -> np.ndarray | None:
    """A curve row's test scores in the order of ``truth``'s rows (the product's come with
    their corners, the baselines' in that order already); None when the row has none."""
    scores = row.get("test_scores")
    if scores is None:
        return None
    if "test_origins" not in row:
        return np.asarray(scores, dtype=np.float64)
    at = {tuple(o): s for o, s in zip(row["test_origins"], scores, strict=True)}
    return np.asarray([at[tuple(c)] for c in truth["corners"].tolist()], dtype=np.float64)


def evaluate(scores: np.ndarray, threshold: float, truth: dict[str, Any]) -> dict[str, Any]:
    """One detector on one painting's test set."""
    owner = truth["owner"]
    painted = owner >= 0  # real defects left out of the painted figures
    y = owner[painted] > 0
    s = scores[painted]
    found = scores >= threshold
    by_kind: dict[str, list[int]] = {}
    faint = [0, 0]
    for artifact in np.unique(owner[owner > 0]):
        # an artifact is found when any patch it makes an artifact patch is flagged
        hit = bool(found[owner == artifact].any())
        kind = truth["kind"][int(artifact)]
        got = by_kind.setdefault(kind, [0, 0])
        got[0] += hit
        got[1] += 1
        if truth["faint"][int(artifact)]:
            faint[0] += hit
            faint[1] += 1
    real = owner < 0
    clean = owner == 0
    real_vs_clean = np.r_[np.ones(real.sum(), bool), np.zeros(clean.sum(), bool)]
    real_pr = average_precision(real_vs_clean, np.r_[scores[real], scores[clean]])
    return {
        "pr_auc": float(average_precision(y, s)) if y.any() else None,
        "precision_at_recall_0.9": float(precision_at_recall(y, s, 0.9)) if y.any() else None,
        "patch_recall": float(found[owner > 0].mean()) if (owner > 0).any() else None,
        "recall_by_kind": by_kind,
        "faint_recall": faint,
        "real_defects": {
            "patches": int(real.sum()),
            "recall": [int(found[real].sum()), int(real.sum())],
            "pr_auc": float(real_pr) if real.any() else None,
        },
        "test_painted_patches": int((owner > 0).sum()),
        "test_artifacts": len(np.unique(owner[owner > 0])),
    }


def painting_report(dataset: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Every strategy's evaluation per budget (labels) on one painting's test set."""
    truth = held_out_truth(dataset)
    out: dict[str, Any] = {}
    for name, s in results["strategies"].items():
        per_budget: dict[str, Any] = {}
        for row in s["per_seed"][0]:
            scores = row_scores(row, truth)
            if scores is None:  # no classifier yet: nothing ranks the patches
                continue
            threshold = float(row.get("threshold") or 0.5)
            per_budget[str(row["labels"])] = evaluate(scores, threshold, truth)
        out[name] = per_budget
    return out


def interval(values: list[float], *, seed: int = 0) -> list[float] | None:
    """95% percentile bootstrap interval of the mean of ``values``."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(BOOTSTRAP, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [round(float(lo), 3), round(float(hi), 3)]


def _mean(values: list[Any]) -> float | None:
    v = [x for x in values if x is not None]
    return round(float(np.mean(v)), 3) if v else None


def _sum_pairs(pairs: list[list[int]]) -> list[int]:
    return [int(sum(p[0] for p in pairs)), int(sum(p[1] for p in pairs))]


def combine(paintings: list[dict[str, Any]]) -> dict[str, Any]:
    """Over paintings (each its own seed): per strategy and budget the mean of each figure
    with a bootstrap interval over paintings, and the test sizes summed."""
    out: dict[str, Any] = {}
    names = sorted({n for p in paintings for n in p}, key=lambda n: n)
    for name in names:
        budgets = sorted({b for p in paintings for b in p.get(name, {})}, key=int)
        per: dict[str, Any] = {}
        for b in budgets:
            rows = [p[name][b] for p in paintings if b in p.get(name, {})]
            kinds = sorted({k for r in rows for k in r["recall_by_kind"]})
            pr = [r["pr_auc"] for r in rows]
            p90 = [r["precision_at_recall_0.9"] for r in rows]
            real_pr = [r["real_defects"]["pr_auc"] for r in rows]
            per[b] = {
                "paintings": len(rows),
                "pr_auc": _mean(pr),
                "pr_auc_interval": interval(pr),
                "pr_auc_per_painting": [None if v is None else round(v, 3) for v in pr],
                "precision_at_recall_0.9": _mean(p90),
                "precision_at_recall_0.9_interval": interval(p90),
                "recall_by_kind": {
                    k: _sum_pairs(
                        [r["recall_by_kind"][k] for r in rows if k in r["recall_by_kind"]]
                    )
                    for k in kinds
                },
                "faint_recall": _sum_pairs([r["faint_recall"] for r in rows]),
                "real_defects": {
                    "patches": int(sum(r["real_defects"]["patches"] for r in rows)),
                    "recall": _sum_pairs([r["real_defects"]["recall"] for r in rows]),
                    "pr_auc": _mean(real_pr),
                    "pr_auc_interval": interval(real_pr),
                },
                "test_painted_patches": int(sum(r["test_painted_patches"] for r in rows)),
                "test_artifacts": int(sum(r["test_artifacts"] for r in rows)),
            }
        out[name] = per
    return out


def _cell(v: dict[str, Any] | None) -> str:
    if not v or v.get("pr_auc") is None:
        return "-"
    ci = v.get("pr_auc_interval")
    return f"{v['pr_auc']:.2f} ({ci[0]:.2f}-{ci[1]:.2f})" if ci else f"{v['pr_auc']:.2f}"


def table(summary: dict[str, Any], budgets: tuple[int, ...] = (50, 100, 200, 300)) -> str:
    """Markdown: test PR-AUC on painted artifacts (mean over paintings, 95% interval) per
    budget and fully labelled, precision at recall 0.9 at 200 labels, test sizes; then the
    real defects' rows."""
    head = " | ".join(f"@{b}" for b in budgets)
    lines = [
        f"| volume / painter | strategy | paintings | test artifact patches / artifacts | {head} "
        "| all labels | precision @ recall 0.9, 200 | faint recall @200 |",
        "| " + " | ".join(["---"] * (len(budgets) + 7)) + " |",
    ]
    real: list[str] = []
    for run_name, run in summary["runs"].items():
        for name, per in run["report"].items():
            last = per[max(per, key=int)] if per else None
            full = last if name.endswith("all-labels") or "-all-" in name else None
            cells = [_cell(per.get(str(b))) if full is None else "-" for b in budgets]
            at200 = per.get("200") or {}
            any_row = at200 or last or {}
            p90 = at200.get("precision_at_recall_0.9")
            faint = at200.get("faint_recall")
            lines.append(
                f"| {run_name} | {name} | {any_row.get('paintings', 0)} | "
                f"{any_row.get('test_painted_patches', 0)} / {any_row.get('test_artifacts', 0)} | "
                + " | ".join(cells)
                + f" | {_cell(full)} | "
                + (f"{p90:.2f}" if p90 is not None else "-")
                + " | "
                + (f"{faint[0]}/{faint[1]}" if faint and faint[1] else "-")
                + " |"
            )
            rd = (at200 or last or {}).get("real_defects") or {}
            if rd.get("patches"):
                rec = rd["recall"]
                pr = f"{rd['pr_auc']:.2f}" if rd.get("pr_auc") is not None else "-"
                real.append(f"| {run_name} | {name} | {rd['patches']} | {pr} | {rec[0]}/{rec[1]} |")
    if real:
        lines += [
            "",
            "Real defects (not painted), at 200 labels or all labels: PR-AUC against the test "
            "set's clean patches, recall at the detector's threshold",
            "",
            "| volume / painter of the training artifacts | strategy | real-defect test patches "
            "| PR-AUC | recall |",
            "| --- | --- | --- | --- | --- |",
            *real,
        ]
    return "\n".join(lines)


def kind_table(summary: dict[str, Any], budget: str = "200") -> str:
    """Markdown: per painter and strategy, the painted test artifacts found at the detector's
    own threshold (any of its patches flagged), by kind, at ``budget`` labels (the fully
    labelled detectors at all labels)."""
    lines: list[str] = []
    for run_name, run in summary["runs"].items():
        if run_name.endswith("both painters"):
            continue
        rows = {
            name: per.get(budget) or (per[max(per, key=int)] if "all-" in name and per else None)
            for name, per in run["report"].items()
        }
        kinds = sorted({k for r in rows.values() if r for k in r["recall_by_kind"]})
        if not kinds:
            continue
        lines += [
            "",
            f"{run_name}: painted test artifacts found / in the test sections, by kind",
            "",
            "| strategy | " + " | ".join(kinds) + " | faint |",
            "| " + " | ".join(["---"] * (len(kinds) + 2)) + " |",
        ]
        for name, r in rows.items():
            if not r:
                continue
            cells = [
                "{}/{}".format(*r["recall_by_kind"][k]) if k in r["recall_by_kind"] else "-"
                for k in kinds
            ]
            faint = r["faint_recall"]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {faint[0]}/{faint[1]} |")
    return "\n".join(lines)
