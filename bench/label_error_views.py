"""Which view of the model finds flipped labels best? Measured on the kept stores of a
``simulate`` run with a noisy annotator.

    python bench/label_error_views.py DATASET --out bench/results/annotator_noise/label-error-views
    python bench/label_error_views.py --stores WORK --out ...   # analyse stores kept before

Runs ``simulate`` (the default strategy, annotators ``a:0,b:0,c:0.2``, the consensus, 300
labels, seeds 10-14 unless told otherwise) keeping every curve's store (``keep_work``), then
reads each curve's last training: its view of the training labels (``label_view.npz``: the
classifier's p(artifact) and pooled features of each label, and the autoencoder's embedding
where the run saved it), the labels, and the ground truth. For each candidate view of the model
it runs the product's own label check (``out_of_fold``, ``at_prevalence``, the consensus of every
label with that view, ``suspects_of`` with no threshold) and reports per seed the average
precision of P(wrong) for the flipped labels, and, per suspect threshold, recall and precision
per seed and how many seeds reach recall 0.7 at precision 0.5. The product's check is the row
``features + own logit``; the others are candidates. Views:

- ``features + own logit``: the out-of-fold read-out of the classifier's pooled features beside
  its own logit of the patch (the product's, :func:`server.pipeline.label_errors.view_inputs`);
- ``ae + features``: the out-of-fold read-out of the autoencoder embedding beside the
  classifier's features (the product's check before);
- ``ae``, ``features``: either alone; ``..., penalty chosen``: with the L2 penalty that fits
  the labels best out of fold (:func:`chosen_penalty`) instead of 1;
- ``asked``: the p(artifact) the loop held for the patch when it asked for the label (the
  task's, from a version that had not seen the label), ``features`` where there is none;
- ``features + asked``: the mean of the two (:func:`with_earlier_view`);
- ``in-sample``: the newest classifier's own p(artifact) of its training labels (it trained on
  them: a label judges itself), as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.label_errors import DEFAULT_FOLDS, at_prevalence, out_of_fold
from server.db.tables import AnnotationTask, Dataset, ModelVersion
from server.db.vocabulary import VersionStatus
from server.labels.consensus import label_weights
from server.labels.training_set import training_groups
from server.pipeline.label_errors import LABEL_VIEW, suspects_of, view_inputs
from server.sim.crowd import SWEEP, parse_annotators, passes, recovery_at
from server.sim.replay import ORACLE
from server.sim.simulate import SimulationConfig, run_simulation

PENALTIES = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


def chosen_penalty(features: np.ndarray, labels: np.ndarray) -> float:
    """The L2 penalty of ``PENALTIES`` whose out-of-fold P(class 1) fits the labels best
    (class-balanced log loss)."""
    y = np.asarray(labels).astype(np.int64)
    weight = (len(y) / (2.0 * np.bincount(y, minlength=2)))[y]

    def loss(l2: float) -> float:
        p = out_of_fold(features, y, folds=DEFAULT_FOLDS, seed=0, l2=l2)
        p = np.clip(p, 1e-9, 1 - 1e-9)
        return float(-(weight * np.where(y == 1, np.log(p), np.log(1 - p))).sum())

    return min(PENALTIES, key=loss)


def with_earlier_view(p_fold: np.ndarray, p_asked: np.ndarray) -> np.ndarray:
    """The out-of-fold view averaged with the one the loop held when it asked for the label,
    where there is one (not NaN)."""
    known = np.isfinite(p_asked)
    return np.where(known, (p_fold + np.where(known, p_asked, 0.0)) / 2, p_fold)


def views(saved: dict[str, np.ndarray], asked: np.ndarray) -> dict[str, np.ndarray]:
    """Every candidate view of the model: P(artifact) per label of the saved view."""
    labels = saved["label"]

    def read_out(x: np.ndarray, *, chosen: bool = False) -> np.ndarray:
        l2 = chosen_penalty(x, labels) if chosen else 1.0
        p = out_of_fold(x, labels, folds=DEFAULT_FOLDS, seed=0, l2=l2)
        return at_prevalence(p, labels)

    features = saved["features"].astype(np.float64)
    found = {"features + own logit": read_out(view_inputs(saved))}
    found["features"] = read_out(features)
    if "ae_features" in saved:
        ae = saved["ae_features"].astype(np.float64)
        found["ae + features"] = read_out(np.hstack([ae, features]))
        found["ae"] = read_out(ae)
        found["ae + features, penalty chosen"] = read_out(np.hstack([ae, features]), chosen=True)
    found["features, penalty chosen"] = read_out(features, chosen=True)
    found["asked"] = np.where(np.isfinite(asked), asked, found["features"])
    found["features + asked"] = with_earlier_view(found["features"], asked)
    found["in-sample"] = saved["p_artifact"].astype(np.float64)
    return found


def curve_scores(store: Path, truth: dict[int, bool]) -> dict[str, Any]:
    """One curve's last training: per view, every checked label's P(wrong) and whether it was
    flipped (its verdict against the ground truth of its patch)."""
    engine = create_engine(f"sqlite:///{store / 'loop.sqlite'}")
    try:
        with Session(engine) as session:
            dataset = session.scalars(select(Dataset)).one()
            version = session.scalars(
                select(ModelVersion)
                .where(
                    ModelVersion.kind == "classifier",
                    ModelVersion.status == VersionStatus.READY,
                )
                .order_by(ModelVersion.id.desc())
            ).first()
            if version is None or not version.weights_path:
                raise SystemExit(f"{store}: no trained classifier")
            with np.load(Path(version.weights_path).parent / LABEL_VIEW) as file:
                saved = dict(file)
            groups = training_groups(session, dataset=dataset)
            weights = label_weights(session)
            tasks = {t.id: t for t in session.scalars(select(AnnotationTask))}
            labels = {lab.id: lab for labs in groups.values() for lab in labs}
            position = {lab.id: key for key, labs in groups.items() for lab in labs}
            flipped = {
                lab.id
                for lab in labels.values()
                if (task := tasks.get(lab.task_id or -1)) is not None
                and task.grid_index is not None
                and (lab.label == "artifact") != truth[int(task.grid_index)]
            }
            asked = np.array(
                [
                    np.nan
                    if (lab := labels.get(int(i))) is None
                    or (task := tasks.get(lab.task_id or -1)) is None
                    or task.p_artifact is None
                    else float(task.p_artifact)
                    for i in saved["label_id"]
                ]
            )
            scored = {}
            for name, p in views(saved, asked).items():
                model = {
                    position[int(i)]: float(v)
                    for i, v in zip(saved["label_id"], p, strict=True)
                    if int(i) in position
                }
                scored[name] = [
                    (round(wrong, 4), lab.id in flipped)
                    for lab, wrong in suspects_of(groups, model=model, weights=weights, at=0.0)
                    if position[lab.id] in model
                ]
    finally:
        engine.dispose()
    return {"labels": len(labels), "flipped": len(flipped), "scores": scored}


def average_precision(scored: list[tuple[float, bool]]) -> float | None:
    flags = np.array([f for _, f in sorted(scored, key=lambda pair: -pair[0])], dtype=bool)
    if not flags.any():
        return None
    precision = np.cumsum(flags) / np.arange(1, len(flags) + 1)
    return float(precision[flags].mean())


def summarise(curves: dict[str, dict[str, Any]]) -> dict[str, Any]:
    names = list(next(iter(curves.values()))["scores"])
    out: dict[str, Any] = {}
    for name in names:
        ap = [average_precision(c["scores"][name]) for c in curves.values()]
        rows = []
        for at in SWEEP:
            per_seed = [
                recovery_at(c["scores"][name], c["flipped"], at=at) for c in curves.values()
            ]
            rows.append(
                {
                    "suspect_at": at,
                    "seeds_passing": sum(passes(r) for r in per_seed),
                    "recall_min": min(r["recall"] or 0 for r in per_seed),
                    "precision_min": min(r["precision"] or 0 for r in per_seed),
                    "per_seed": per_seed,
                }
            )
        known = [a for a in ap if a is not None]
        out[name] = {
            "average_precision_per_seed": [None if a is None else round(a, 4) for a in ap],
            "average_precision_mean": round(float(np.mean(known)), 4) if known else None,
            "thresholds": rows,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, nargs="?")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stores", type=Path, help="a kept simulate work folder to analyse")
    parser.add_argument("--annotators", default="a:0,b:0,c:0.2")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=10)
    parser.add_argument("--budget", type=int, default=300)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.stores
    if work is None:
        if args.dataset is None:
            parser.error("give a DATASET to simulate, or --stores")
        config = replace(
            SimulationConfig(),
            strategies=("hybrid",),
            budget=args.budget,
            seeds=args.seeds,
            first_seed=args.first_seed,
            annotators=parse_annotators(args.annotators, reserved=ORACLE),
            label_aggregation="consensus",
            keep_work=True,
        )
        run_simulation(
            args.dataset,
            out_dir=args.out,
            config=config,
            progress=lambda message, done, total: print(f"{done}/{total} {message}", flush=True),
        )
        work = args.out / ".work"
    truth = {int(i): bool(t) for i, t in np.load(work / "template" / "verdicts.npy")}
    curves = {
        store.name: curve_scores(store, truth) for store in sorted(work.glob("*-*"))
        if (store / "loop.sqlite").is_file()
    }  # fmt: skip
    summary = {
        "curves": {k: {"labels": c["labels"], "flipped": c["flipped"]} for k, c in curves.items()},
        "views": summarise(curves),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name, row in summary["views"].items():
        best = max(row["thresholds"], key=lambda r: (r["seeds_passing"], r["precision_min"]))
        at_02 = next(r for r in row["thresholds"] if r["suspect_at"] == 0.2)
        print(
            f"{name:18s} AP {row['average_precision_mean']:.3f} per seed"
            f" {row['average_precision_per_seed']}; from 0.2: {at_02['seeds_passing']} of"
            f" {len(curves)} seeds at 70%/0.5 (recall >= {at_02['recall_min']:.2f}, precision >="
            f" {at_02['precision_min']:.2f}); most seeds from {best['suspect_at']}"
            f" ({best['seeds_passing']})"
        )


if __name__ == "__main__":
    main()
