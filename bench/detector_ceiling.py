"""How strong can a detector of the hard benchmark's painted artifacts be? Detectors trained on
every pool patch's label (the ceiling) and on a random 200-label subset, measured on
validation sections held out from the pool (never on the test sections).

    python bench/detector_ceiling.py --volume cremi-c --painter msem --seed 0
    python bench/detector_ceiling.py --table    # --out's paintings: summary.json and a table

Each run paints the volume as ``bench/real_tissue_hard.py`` does (same density, the same
paint seed for the same ``--seed``, the real defects moved into the test sections), reads the
patches back through the product's reader, leaves out the test sections (every third) and
splits the pool's sections into ``--folds`` validation folds: every fold is validated by
detectors trained on the other folds, so every pool patch is a validation patch once and the
PR-AUC is over all of them. Detectors:

- ``product``: the product's classifier (``models.training.train_classifier``, its encoder
  from ``pretrain_autoencoder`` on the dataset's patches, normalised by the dataset's mean and
  std as the service reads them);
- ``section-norm``: the same steps, every patch normalised by its section's median and MAD;
- ``product+section-stats``: the product classifier's pooled embedding beside per-patch
  statistics as z-scores against the section, a logistic regression on both;
- ``section-norm+section-stats``: the same with the section-normalised classifier;
- ``features-gbm`` / ``-logistic``: the hand features (``server.sim.baselines``);
- ``section-features-gbm`` / ``-logistic``: those beside their z-scores against the section
  (median and MAD of its patches) and those of :func:`section_stats`;
- ``block-features-gbm`` / ``-logistic``: those and :func:`block_zscores`.

Per detector, ``found_all_labels`` counts the positives among the top-k validation patches
(k: the positives), per artifact kind and per painted coverage: what each detector misses.
The autoencoders pretrain briefly (``--pretrain-epochs``) and the classifiers train for at
most ``--epochs``: cheap settings, the same for every CNN detector.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.real_tissue_hard import DENSITY, TEST_EVERY, density
from models.calibration import predict_logits
from models.metrics import average_precision
from models.training import pretrain_autoencoder, train_classifier
from models.vocab import ARTIFACT_TYPES
from server.labels.truth import load_truth, load_truth_types
from server.pixels.grid import Grid
from server.pixels.source import PatchSource
from server.sim.baselines import LogisticModel, patch_features
from server.sim.hard_tissue import defects_into_test, fetch_with_defects, make_hard_dataset
from server.sim.real_tissue import VOLUMES
from server.sim.synth import PATCH

CNN = ("product", "section-norm", "product+section-stats", "section-norm+section-stats")
FEATURES = tuple(f"{t}-{m}" for t in ("features", "section-features", "block-features") for m in ("gbm", "logistic"))  # fmt: skip
DETECTORS = CNN + FEATURES
LABELS = 200


def section_zscores(values: np.ndarray, sections: np.ndarray) -> np.ndarray:
    """Each column of ``values`` (one row per patch) as a robust z-score against the patches
    of the same section: (value - section median) / (1.4826 MAD of the section)."""
    out = np.empty_like(values, dtype=np.float64)
    for z in np.unique(sections):
        rows = sections == z
        median = np.median(values[rows], axis=0)
        mad = 1.4826 * np.median(np.abs(values[rows] - median), axis=0)
        spread = np.maximum(mad, 1e-3 * (np.abs(median) + 1.0))
        out[rows] = (values[rows] - median) / spread
    return out


def section_stats(raw: np.ndarray) -> np.ndarray:
    """Per raw uint8 patch: mean, std, gradient energy, high-frequency (Laplacian) energy,
    the fractions of empty (<= 3) and saturated (>= 252) pixels."""
    x = raw.astype(np.float32)
    gy, gx = np.diff(x, axis=1), np.diff(x, axis=2)
    lap = x[:, 1:-1, 1:-1] * 4 - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return np.stack(
        [
            x.mean((1, 2)), x.std((1, 2)),
            np.log1p((gy**2).mean((1, 2)) + (gx**2).mean((1, 2))), np.log1p((lap**2).mean((1, 2))),
            (raw <= 3).mean((1, 2)), (raw >= 252).mean((1, 2)),
        ],
        axis=1,
    ).astype(np.float64)  # fmt: skip


def block_zscores(raw: np.ndarray, sections: np.ndarray, *, blocks: int = 4) -> np.ndarray:
    """Sub-patch statistics against the section: every patch cut into ``blocks`` x ``blocks``
    blocks, each block's :func:`section_stats` and gradient anisotropy as robust z-scores
    against all blocks of the section; per patch the largest and the smallest z-score of each
    statistic over its blocks (an artifact covering a quarter of a patch is diluted in the
    patch's own statistics, not in its blocks')."""
    n, h, w = raw.shape
    bh, bw = h // blocks, w // blocks
    cut = raw[:, : bh * blocks, : bw * blocks].reshape(n, blocks, bh, blocks, bw)
    flat = cut.transpose(0, 1, 3, 2, 4).reshape(n * blocks * blocks, bh, bw)
    x = flat.astype(np.float32)
    gy, gx = np.diff(x, axis=1)[:, :, :-1], np.diff(x, axis=2)[:, :-1, :]
    ey, ex = (gy**2).mean((1, 2)), (gx**2).mean((1, 2))
    stats = np.hstack([section_stats(flat), (np.abs(ey - ex) / (ey + ex + 1e-3))[:, None]])
    z = section_zscores(stats, np.repeat(sections, blocks * blocks)).reshape(n, blocks * blocks, -1)
    return np.hstack([z.max(axis=1), z.min(axis=1)])


def section_normalised(raw: np.ndarray, sections: np.ndarray) -> np.ndarray:
    """``(n, 1, p, p)`` float32: each patch minus its section's median, over 1.4826 MAD."""
    out = np.empty((len(raw), 1, *raw.shape[1:]), np.float32)
    for z in np.unique(sections):
        rows = np.flatnonzero(sections == z)
        pixels = raw[rows].astype(np.float32)
        median = float(np.median(pixels))
        mad = 1.4826 * float(np.median(np.abs(pixels - median))) or 1.0
        out[rows, 0] = (pixels - median) / mad
    return out


def read_windows(source: PatchSource, origins: np.ndarray, *, margin: int) -> np.ndarray:
    """Raw windows of ``PATCH + 2 margin`` px centred on the patches at ``origins``: each
    section read whole and mirrored (reflection padding) beyond its bounding box."""
    (x0, y0, _), (width, height, _) = source.info.bbox_offset, source.info.bbox_size
    size = PATCH + 2 * margin
    out = np.empty((len(origins), size, size), np.dtype(source.info.dtype))
    for z in np.unique(origins[:, 2]):
        padded = np.pad(source.read_region((x0, y0, int(z)), (width, height)), margin, "reflect")
        for i in np.flatnonzero(origins[:, 2] == z):
            x, y = origins[i, 0] - x0, origins[i, 1] - y0
            out[i] = padded[y : y + size, x : x + size]
    return out


def paint(
    volume: str, painter: str, seed: int, work: Path, cache: Path, *, margin: int = 0
) -> dict[str, Any]:
    """The painted dataset's patches (raw and as the service normalises them, with the mean and
    std it uses), truth, types and sections, painted as the hard benchmark paints this seed;
    with ``margin``, each patch's raw window of ``margin`` px more on every side as well."""
    spec = VOLUMES[volume]
    sections, defects = fetch_with_defects(spec, cache)
    sections, defects = defects_into_test(sections, defects, test_every=TEST_EVERY)
    folder = work / f"{volume}-{painter}-{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    make_hard_dataset(
        sections, folder, painter=painter, seed=1000 * spec.paint_seed + seed, defects=defects,
        artifacts_per_section=density(painter, sections), voxel_size=spec.voxel_size,
        test_every=TEST_EVERY,
    )  # fmt: skip
    origins, truth = load_truth(folder)
    types = load_truth_types(folder, len(truth))
    with PatchSource.open(folder, layer="color", mag=1) as source:
        raw = source.read_patches(origins, size_px=PATCH)
        window = read_windows(source, origins, margin=margin) if margin else None
        grid = Grid(
            offset=source.info.bbox_offset, size=source.info.bbox_size, mag=(1, 1, 1),
            patch=PATCH, stride=PATCH,
        )  # fmt: skip
        from server.datasets.service import sample_statistics

        mean, std = sample_statistics(source, grid, n_patches=64)  # as register_dataset
    with PatchSource.open(folder, layer="artifact_mask", mag=1) as source:
        coverage = (source.read_patches(origins, size_px=PATCH) > 0).mean(axis=(1, 2))
    truth_file = json.loads((folder / "truth.json").read_text())
    kind_of = {a["id"]: a["kind"] for a in truth_file["artifacts"]}
    kind_of[-1] = "real-defect"
    shutil.rmtree(folder, ignore_errors=True)
    z = origins[:, 2]
    return {
        "raw": raw,
        "window": window,
        "norm": (mean, std),
        "x": ((raw.astype(np.float32) - mean) / std)[:, None],
        "truth": truth.astype(np.float32),
        "types": np.asarray(
            [
                ARTIFACT_TYPES.index(t) if ok and t in ARTIFACT_TYPES else -1
                for t, ok in zip(types, truth, strict=True)
            ],
            np.int64,
        ),
        "z": z,
        "kind": np.asarray([kind_of.get(o, "") for o in truth_file["owner"]]),
        "coverage": coverage,
        "test": np.isin(z, np.unique(z)[::TEST_EVERY]),
    }


def cnn_scores(
    x: np.ndarray, y: np.ndarray, types: np.ndarray, train: np.ndarray, val: np.ndarray,
    *, ae: Any, args: argparse.Namespace, seed: int, config: Any = None,
) -> tuple[np.ndarray, Any]:  # fmt: skip
    """Validation logits of the product's classifier trained on ``train`` (types as the
    service passes them: when at least 10 labels have one; ``config`` for other inputs)."""
    typed = types[train]
    result = train_classifier(
        x[train], y[train], autoencoder=ae, types=typed if (typed >= 0).sum() >= 10 else None,
        config=config, epochs=args.epochs, tta=args.tta, seed=seed, device="cpu",
    )  # fmt: skip
    return predict_logits(result.model, x[val], tta=args.tta), result.model


def embedding(model: Any, x: np.ndarray) -> np.ndarray:
    """The classifier's pooled encoder features (the head's input) of ``x``."""
    with torch.inference_mode():
        parts = [
            model.eval().features(torch.from_numpy(x[s : s + 64])) for s in range(0, len(x), 64)
        ]
        return np.concatenate([p.numpy() for p in parts])


def fit_predict(kind: str, features: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray) -> np.ndarray:  # fmt: skip
    if kind == "gbm":
        from sklearn.ensemble import HistGradientBoostingClassifier

        booster = HistGradientBoostingClassifier(class_weight="balanced", random_state=0)
        return booster.fit(features[train], y[train]).predict_proba(features[val])[:, 1]
    return LogisticModel().fit(features[train], y[train]).predict(features[val])


def begin(
    args: argparse.Namespace, *, margin: int = 0
) -> tuple[float, dict[str, Any], np.ndarray, list[str]]:
    """A detector bench's painting: when it started, the painted data (:func:`paint`), every
    patch's validation fold and the detectors asked for. Torch on one thread (cheap settings,
    the same for every detector)."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = paint(args.volume, args.painter, args.seed, args.work, args.cache, margin=margin)
    detectors = [d for d in args.detectors.split(",") if d]
    return started, data, pool_folds(data, args.folds), detectors


def pretrained(x: np.ndarray, args: argparse.Namespace, *, config: Any = None) -> Any:
    """The product's autoencoder pretrained on a random sample of ``x`` (the service pretrains
    on a random sample of grid patches), at the bench's settings."""
    rng = np.random.default_rng(args.seed)
    sample = np.sort(rng.choice(len(x), size=min(args.pretrain_patches, len(x)), replace=False))
    return pretrain_autoencoder(
        x[sample], config=config, epochs=args.pretrain_epochs, seed=args.seed, device="cpu"
    ).model


def run(args: argparse.Namespace) -> dict[str, Any]:
    started, data, fold, detectors = begin(args)
    y, z = data["truth"], data["z"]
    inputs = {"product": data["x"]}
    if any(d.startswith("section-norm") for d in detectors):
        inputs["section-norm"] = section_normalised(data["raw"], z)
    aes = {name: pretrained(x, args) for name, x in inputs.items()}
    hand = patch_features(data["x"])
    stats = section_stats(data["raw"])
    relative = np.hstack([hand, section_zscores(hand, z), section_zscores(stats, z)])
    tables = {
        "features": hand,
        "section-features": relative,
        "block-features": np.hstack([relative, block_zscores(data["raw"], z)]),
    }
    scores = empty_scores(detectors, len(y))
    for subset, train, val in fold_training(y, fold, folds=args.folds, seed=args.seed, started=started):  # fmt: skip
        for d in detectors:
            if d in FEATURES:
                table_name, kind = d.rsplit("-", 1)
                scores[d][subset][val] = fit_predict(kind, tables[table_name], y, train, val)
        for d in ("product", "section-norm"):
            fused = f"{d}+section-stats"
            if d not in detectors and fused not in detectors:
                continue
            logits, model = cnn_scores(
                inputs[d], y, data["types"], train, val, ae=aes[d], args=args, seed=args.seed
            )
            if d in detectors:
                scores[d][subset][val] = logits
            if fused in detectors:
                both = np.hstack([embedding(model, inputs[d]), section_zscores(stats, z)])
                scores[fused][subset][val] = fit_predict("logistic", both, y, train, val)
    return record(args, data, scores, fold, started)


def pool_folds(data: dict[str, Any], folds: int) -> np.ndarray:
    """Per patch its validation fold (the pool's sections dealt in turn), -1 for test patches."""
    z = data["z"]
    fold_of = {int(s): i % folds for i, s in enumerate(np.unique(z[~data["test"]]))}
    return np.asarray([fold_of.get(int(s), -1) for s in z])


def training_sets(fold: np.ndarray, k: int, seed: int) -> dict[str, np.ndarray]:
    """Fold ``k``'s training patches: every other fold's (``all``) and a random ``LABELS``
    (all of them where the other folds hold fewer)."""
    everything = np.flatnonzero((fold >= 0) & (fold != k))
    rng = np.random.default_rng([seed, k, 7])
    some = rng.choice(everything, min(LABELS, len(everything)), replace=False)
    return {"all": everything, str(LABELS): np.sort(some)}


def empty_scores(detectors: list[str], n: int) -> dict[str, dict[str, np.ndarray]]:
    """Per detector and training set (``all``, ``LABELS``) a score per patch, filled by fold."""
    return {d: {s: np.zeros(n) for s in ("all", str(LABELS))} for d in detectors}


def fold_training(
    y: np.ndarray, fold: np.ndarray, *, folds: int, seed: int, started: float
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(subset, train, val)`` for every validation fold and training set that holds two
    positives or more; the time so far printed after each."""
    for k in range(folds):
        val = np.flatnonzero(fold == k)
        for subset, train in training_sets(fold, k, seed).items():
            if y[train].sum() < 2:
                continue
            yield subset, train, val
            print(f"  fold {k} {subset}: {time.perf_counter() - started:.0f} s", flush=True)


def detector_main(
    ap: argparse.ArgumentParser,
    detectors: tuple[str, ...],
    run: Callable[[argparse.Namespace], dict[str, Any]],
) -> None:
    """A detector bench's command line: ``--table`` summarises ``--out``, else one painting."""
    args = ap.parse_args()
    if args.table:
        summary = summarise(args.out, detectors)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(summary_table(summary))
        return
    unknown = sorted(set(args.detectors.split(",")) - set(detectors) - {""})
    if unknown:
        ap.error(f"unknown detectors {unknown}; known: {', '.join(detectors)}")
    save(args, run(args))


def record(
    args: argparse.Namespace, data: dict[str, Any], scores: dict[str, dict[str, np.ndarray]],
    fold: np.ndarray, started: float,
) -> dict[str, Any]:  # fmt: skip
    """A painting's result: PR-AUCs over the validation patches, their counts, what is found."""
    y, pool, validated = data["truth"], ~data["test"], fold >= 0
    result: dict[str, Any] = {
        "volume": args.volume, "painter": args.painter, "seed": args.seed, "folds": args.folds,
        "validation_patches": int(validated.sum()), "validation_positives": int(y[validated].sum()),
        "pool_positives": int(y[pool].sum()), "labels": LABELS,
        "settings": {k: getattr(args, k) for k in ("pretrain_patches", "pretrain_epochs", "epochs", "tta")},
        "pr_auc": {
            d: {s: round(average_precision(y[validated], v[validated]), 4) for s, v in per.items()}
            for d, per in scores.items()
        },
        # scores of different folds' models pooled above; per fold here (no mixed scales)
        "pr_auc_fold_mean": {
            d: {s: round(fold_mean(y, v, fold, args.folds), 4) for s, v in per.items()}
            for d, per in scores.items()
        },
        "seconds": round(time.perf_counter() - started, 1),
        "found_all_labels": {d: found(per["all"], y, data, validated) for d, per in scores.items()},
    }  # fmt: skip
    return result


def fold_mean(y: np.ndarray, scores: np.ndarray, fold: np.ndarray, folds: int) -> float:
    """The mean over validation folds of each fold's PR-AUC."""
    values = [average_precision(y[fold == k], scores[fold == k]) for k in range(folds)]
    return float(np.mean(values))


def found(
    scores: np.ndarray, y: np.ndarray, data: dict[str, Any], rows: np.ndarray
) -> dict[str, Any]:
    """Recall among the top-k scored validation patches (k = the positives), per artifact kind
    and per bin of the painted coverage of the patch: which artifacts a detector misses."""
    idx = np.flatnonzero(rows)
    k = int(y[idx].sum())
    top = np.zeros(len(y), bool)
    top[idx[np.argsort(-scores[idx], kind="stable")[:k]]] = True
    pos = idx[y[idx] == 1]
    bins = {"<10%": (0, 0.1), "10-50%": (0.1, 0.5), ">=50%": (0.5, 1.01)}
    out: dict[str, Any] = {"kind": {}, "coverage": {}}
    for kind in sorted(set(data["kind"][pos])):
        sel = pos[data["kind"][pos] == kind]
        out["kind"][kind] = [int(top[sel].sum()), len(sel)]
    for name, (lo, hi) in bins.items():
        sel = pos[(data["coverage"][pos] >= lo) & (data["coverage"][pos] < hi)]
        out["coverage"][name] = [int(top[sel].sum()), len(sel)]
    return out


def summarise(out: Path, detectors: tuple[str, ...] = DETECTORS) -> dict[str, Any]:
    """Per volume, painter and detector: PR-AUC mean and std over paintings (200 and all labels),
    the paired gain over ``product`` and the mean over paintings of the folds' mean (200)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.glob("*/*/seed-*.json")):
        run = json.loads(path.read_text())
        groups.setdefault(f"{run['volume']}/{run['painter']}", []).append(run)
    summary: dict[str, Any] = {}
    for key, runs in sorted(groups.items()):
        rows: dict[str, Any] = {}
        for d in detectors:
            have = [r for r in runs if d in r["pr_auc"]]
            if not have:
                continue
            row: dict[str, Any] = {"paintings": [r["seed"] for r in have]}
            for s in (str(LABELS), "all"):
                v = np.asarray([r["pr_auc"][d][s] for r in have])
                row[s] = {"mean": round(float(v.mean()), 3), "std": round(float(v.std()), 3)}
            gain = np.asarray(
                [r["pr_auc"][d][str(LABELS)] - r["pr_auc"]["product"][str(LABELS)] for r in have]
            )
            row["vs_product_200"] = round(float(gain.mean()), 3)
            per_fold = [r["pr_auc_fold_mean"][d][str(LABELS)] for r in have if d in r.get("pr_auc_fold_mean", {})]  # fmt: skip
            row["fold_mean_200"] = round(float(np.mean(per_fold)), 3) if per_fold else None
            rows[d] = row
        summary[key] = {
            "validation_positives": [r["validation_positives"] for r in runs],
            "detectors": rows,
        }
    return summary


def summary_table(summary: dict[str, Any]) -> str:
    lines = [
        "| volume/painter | val. positives | detector | n | PR-AUC 200 labels | all labels "
        "| vs product at 200 | 200, mean of folds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, group in summary.items():
        positives = "/".join(str(p) for p in group["validation_positives"])
        for d, row in group["detectors"].items():
            cells = [f"{row[s]['mean']:.2f} ± {row[s]['std']:.2f}" for s in (str(LABELS), "all")]
            lines.append(
                f"| {key} | {positives} | {d} | {len(row['paintings'])} | {cells[0]} | {cells[1]} "
                f"| {row['vs_product_200']:+.2f} | {row['fold_mean_200'] or float('nan'):.2f} |"
            )
    return "\n".join(lines)


def painting_arguments(
    ap: argparse.ArgumentParser, *, detectors: tuple[str, ...], out: Path
) -> None:
    """The options every detector bench on the hard benchmark's paintings takes."""
    ap.add_argument("--volume", default="cremi-c", choices=sorted(VOLUMES))
    ap.add_argument("--painter", default="msem", choices=sorted(DENSITY))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--detectors", default=",".join(detectors), help="of: " + ",".join(detectors))
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--pretrain-patches", type=int, default=1000)
    ap.add_argument("--pretrain-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--tta", type=int, default=2)
    ap.add_argument("--out", type=Path, default=out)
    ap.add_argument("--work", type=Path, default=Path(".real_tissue/ceiling"))
    ap.add_argument("--cache", type=Path, default=Path(".real_tissue/downloads"))
    ap.add_argument("--table", action="store_true", help="summarise --out's paintings, run none")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    painting_arguments(ap, detectors=DETECTORS, out=Path("bench/results/detector_ceiling"))
    detector_main(ap, DETECTORS, run)


def save(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Write a painting's result; detectors of the same painting run before and not now stay."""
    path = args.out / args.volume / args.painter / f"seed-{args.seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result["commands"] = [" ".join(sys.argv)]
    if path.exists():
        earlier = json.loads(path.read_text())
        if earlier["settings"] == result["settings"]:
            for key in ("pr_auc", "pr_auc_fold_mean", "found_all_labels"):
                result[key] = {**earlier.get(key, {}), **result[key]}
            result["commands"] = (
                earlier.get("commands", [earlier.get("command")]) + result["commands"]
            )
            result["seconds"] += earlier["seconds"]
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["pr_auc"], indent=1))


if __name__ == "__main__":
    main()
