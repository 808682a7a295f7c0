"""Label-free anomaly scores as detectors of the hard benchmark's painted artifacts, alone and
beside the product's classifier, measured as ``bench/detector_ceiling.py`` measures (the same
paintings, validation folds of the pool's sections, a random 200 and all labels).

    python bench/detector_anomaly.py --volume cremi-c --painter msem --seed 0
    python bench/detector_anomaly.py --table    # --out's paintings: summary.json and a table

With 200 labels a painting gives the classifier 10-20 artifact patches of 7-8 kinds; an
artifact is also what the tissue around it is not. The product's autoencoder (pretrained on a
sample of the dataset's patches, as the service does) and the hand features give four scores
no label shaped:

- ``recon-error``: its reconstruction error of the patch (``models.scoring.score_stream``);
- ``recon-section``: that error as a robust z-score against the patch's own section (a
  section imaged darker or noisier than the rest reconstructs worse everywhere);
- ``novelty``: the mean distance of the patch's embedding to its ``--neighbours`` nearest
  embeddings among the patches of the other sections (standardised embeddings), as a robust
  z-score against its section: how unlike any tissue elsewhere in the volume it is;
- ``feature-novelty``: the same distance over the hand features (``server.sim.baselines``)
  beside the patch's statistics against its section (``section_stats``), standardised.

They are read as detectors (label-free: the same at 200 and at all labels), and fused with
labels: ``anomaly-logistic`` (a logistic regression on the four and the patch's statistics
against its section, ``section_stats``), ``product+anomaly`` (the product classifier's embedding
beside those, as ``product+section-stats`` in detector_ceiling) and ``product-logit+anomaly``
(the classifier's validation logit ranked beside the anomaly scores: the mean of the ranks of
the logit and of ``novelty``, no labels used in the fusion).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import detector_ceiling as ceiling
from models.scoring import score_stream
from server.sim.baselines import patch_features

LABEL_FREE = ("recon-error", "recon-section", "novelty", "feature-novelty")
FUSED = ("anomaly-logistic", "product+anomaly", "product-logit+anomaly")
DETECTORS = ("product", *LABEL_FREE, *FUSED)


def anomaly_scores(
    x: np.ndarray, z: np.ndarray, *, autoencoder: Any, hand: np.ndarray, neighbours: int,
    batch: int = 128,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The label-free scores of every patch (see the module's docstring); ``hand``: the hand
    features and section statistics per patch."""
    scores = score_stream(
        (x[s : s + batch] for s in range(0, len(x), batch)), classifier=None, autoencoder=autoencoder
    )  # fmt: skip
    error = scores.recon_error.astype(np.float64)

    def against_section(values: np.ndarray) -> np.ndarray:
        return ceiling.section_zscores(values[:, None], z)[:, 0]

    return {
        "recon-error": error,
        "recon-section": against_section(error),
        "novelty": against_section(knn_distance(scores.embedding, z, neighbours)),
        "feature-novelty": against_section(knn_distance(hand, z, neighbours)),
    }


def knn_distance(values: np.ndarray, z: np.ndarray, neighbours: int) -> np.ndarray:
    """Per row, the mean Euclidean distance (standardised columns) to its ``neighbours``
    nearest rows of other sections."""
    v = np.nan_to_num(np.asarray(values, np.float64))
    v = (v - v.mean(0)) / np.maximum(v.std(0), 1e-6)
    squared = (v**2).sum(1)
    distance = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * v @ v.T, 0.0))
    distance[z[:, None] == z[None, :]] = np.inf  # only tissue of other sections counts
    nearest = np.sort(distance, axis=1)[:, : min(neighbours, len(v) - 1)]
    return np.nanmean(np.where(np.isfinite(nearest), nearest, np.nan), axis=1)


def rank(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to 0..1 (ties broken by order; scores of one fold only)."""
    order = np.argsort(values, kind="stable")
    out = np.empty(len(values))
    out[order] = np.arange(len(values)) / max(len(values) - 1, 1)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    started, data, fold, detectors = ceiling.begin(args)
    y, z, x = data["truth"], data["z"], data["x"]
    ae = ceiling.pretrained(x, args)
    stats = ceiling.section_zscores(ceiling.section_stats(data["raw"]), z)
    hand = np.hstack([patch_features(x), stats])
    anomaly = anomaly_scores(x, z, autoencoder=ae, hand=hand, neighbours=args.neighbours)
    print(f"  anomaly scores: {time.perf_counter() - started:.0f} s", flush=True)
    table = np.hstack([np.stack([anomaly[d] for d in LABEL_FREE], axis=1), stats])
    scores = ceiling.empty_scores(detectors, len(y))
    for subset, train, val in ceiling.fold_training(y, fold, folds=args.folds, seed=args.seed, started=started):  # fmt: skip
        for d in LABEL_FREE:
            if d in detectors:
                scores[d][subset][val] = anomaly[d][val]
        if "anomaly-logistic" in detectors:
            scores["anomaly-logistic"][subset][val] = ceiling.fit_predict(
                "logistic", table, y, train, val
            )
        if not {"product", "product+anomaly", "product-logit+anomaly"} & set(detectors):
            continue
        logits, model = ceiling.cnn_scores(x, y, data["types"], train, val, ae=ae, args=args, seed=args.seed)  # fmt: skip
        if "product" in detectors:
            scores["product"][subset][val] = logits
        if "product+anomaly" in detectors:
            both = np.hstack([ceiling.embedding(model, x), table])
            scores["product+anomaly"][subset][val] = ceiling.fit_predict(
                "logistic", both, y, train, val
            )
        if "product-logit+anomaly" in detectors:
            fused = (rank(logits) + rank(anomaly["novelty"][val])) / 2
            scores["product-logit+anomaly"][subset][val] = fused
    result = ceiling.record(args, data, scores, fold, started)
    result["settings"]["neighbours"] = args.neighbours
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ceiling.painting_arguments(
        ap, detectors=DETECTORS, out=Path("bench/results/detector_ceiling/anomaly")
    )
    ap.add_argument("--neighbours", type=int, default=10, help="k of the novelty score")
    ceiling.detector_main(ap, DETECTORS, run)


if __name__ == "__main__":
    main()
