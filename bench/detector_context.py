"""Context detectors of the hard benchmark's painted artifacts: the product's classifier shown
the patch together with what lies around it, measured as ``bench/detector_ceiling.py`` measures
(the same paintings, validation folds of the pool's sections, a random 200 and all labels).

    python bench/detector_context.py --volume cremi-c --painter msem --seed 0
    python bench/detector_context.py --table    # --out's paintings: summary.json and a table

Many painted positives are spills covering 10-50% of a patch from an artifact centred on its
neighbour; a classifier that sees one patch alone sees a fragment. Every patch's window (the
patch and ``--margin`` px on every side, 280 px by default; sections mirrored at their borders)
is read from the painted dataset and normalised as the service normalises patches. Detectors:

- ``product``: detector_ceiling's baseline, on the same painting (the reference);
- ``context``: two input channels, the patch at full resolution and its window averaged down to
  the patch's size (both centred, so flips and turns keep them aligned); the product's
  autoencoder pretrained on those two channels and its classifier trained from it
  (``models.training``, unchanged; only the encoder's input channels differ);
- ``context-wide``: the window alone, averaged down to the patch's size, one channel;
- ``context-centre``: the window at full resolution through the product's encoder (initialised
  from the product's autoencoder, pretrained on patches: convolutions take any size), the head
  pooling the deepest features over the patch's own cells only, so the patch's label decides
  and the margin reaches it through the receptive field (about 36 px beyond the patch's border
  with the default encoder). The product has no such pooling option: its training code runs
  with :class:`CentreClassifier` in place of its ``Classifier``;
- ``context+section-stats`` / ``context-centre+section-stats``: the context classifier's
  embedding beside the robust z-scores against the section of the patch's and of its window's
  statistics (``section_stats``), a logistic regression on both;
- controls for where a gain comes from: ``product+context-stats``, the product classifier's
  embedding beside the same statistics; ``context-stats-logistic``, those statistics alone.

The settings (``--pretrain-epochs``, ``--epochs``, ``--tta``) are detector_ceiling's cheap ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models.training
from bench.detector_ceiling import (
    begin,
    cnn_scores,
    detector_main,
    embedding,
    empty_scores,
    fit_predict,
    fold_training,
    painting_arguments,
    pretrained,
    record,
    section_stats,
    section_zscores,
)
from models.networks import (
    AutoencoderConfig,
    Classifier,
    ClassifierConfig,
    EncoderConfig,
    pool_features,
)
from server.sim.synth import PATCH

NETWORKS = ("product", "context", "context-wide", "context-centre")
# detector: the network whose embedding it uses
FUSED = {
    "context+section-stats": "context",
    "context-centre+section-stats": "context-centre",
    "product+context-stats": "product",
}
STATS_ONLY = "context-stats-logistic"


class CentreClassifier(Classifier):
    """The product's classifier on a window larger than a patch, its head pooling the deepest
    features over the central ``PATCH`` px only (all of them on a patch-sized input)."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        deepest = self.encoder(x)[-1]
        (h, w), share = deepest.shape[-2:], PATCH / x.shape[-1]
        rows = slice(round(h * (1 - share) / 2), round(h * (1 + share) / 2))
        cols = slice(round(w * (1 - share) / 2), round(w * (1 + share) / 2))
        return pool_features(deepest[..., rows, cols])


DETECTORS = (*NETWORKS, *FUSED, STATS_ONLY)


def context_inputs(data: dict[str, Any], *, batch: int = 128) -> dict[str, np.ndarray]:
    """``context`` (patch, window downsampled) and ``context-wide`` (window downsampled) as
    ``(n, channels, PATCH, PATCH)`` float32, ``context-centre`` (the window) as ``(n, 1, size,
    size)``, normalised by the dataset's mean and std."""
    mean, std = data["norm"]
    full = ((data["window"].astype(np.float32) - mean) / std)[:, None]
    small = np.empty((len(full), 1, PATCH, PATCH), np.float32)
    for s in range(0, len(small), batch):
        small[s : s + batch] = F.interpolate(
            torch.from_numpy(full[s : s + batch]), size=(PATCH, PATCH), mode="area"
        ).numpy()
    return {
        "context": np.concatenate([data["x"], small], axis=1),
        "context-wide": small,
        "context-centre": full,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    started, data, fold, detectors = begin(args, margin=args.margin)
    y, z = data["truth"], data["z"]
    inputs = {"product": data["x"], **context_inputs(data)}
    networks = [n for n in NETWORKS if n in detectors or n in (FUSED.get(d) for d in detectors)]
    # context-centre's encoder starts from the product's autoencoder
    own_ae = {"context-centre": "product"}
    aes = {}
    for name in dict.fromkeys(own_ae.get(n, n) for n in networks):  # one sample for every input
        channels = inputs[name].shape[1]
        config = AutoencoderConfig(encoder=EncoderConfig(in_channels=channels))
        aes[name] = pretrained(inputs[name], args, config=config)
    patch_stats, window_stats = section_stats(data["raw"]), section_stats(data["window"])
    stats = np.hstack([section_zscores(patch_stats, z), section_zscores(window_stats, z)])
    scores = empty_scores(detectors, len(y))
    for subset, train, val in fold_training(y, fold, folds=args.folds, seed=args.seed, started=started):  # fmt: skip
        if STATS_ONLY in detectors:
            scores[STATS_ONLY][subset][val] = fit_predict("logistic", stats, y, train, val)
        for name in networks:
            x = inputs[name]
            config = ClassifierConfig(encoder=EncoderConfig(in_channels=x.shape[1]))
            centre = CentreClassifier if name == "context-centre" else Classifier
            with mock.patch.object(models.training, "Classifier", centre):
                logits, model = cnn_scores(
                    x, y, data["types"], train, val, ae=aes[own_ae.get(name, name)],
                    args=args, seed=args.seed, config=config,
                )  # fmt: skip
            if name in detectors:
                scores[name][subset][val] = logits
            for fused in (d for d in detectors if FUSED.get(d) == name):
                both = np.hstack([embedding(model, x), stats])
                scores[fused][subset][val] = fit_predict("logistic", both, y, train, val)
    result = record(args, data, scores, fold, started)
    result["settings"]["margin"] = args.margin
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    painting_arguments(ap, detectors=DETECTORS, out=Path("bench/results/detector_ceiling/context"))
    ap.add_argument("--margin", type=int, default=PATCH // 2, help="px of context on every side")
    detector_main(ap, DETECTORS, run)


if __name__ == "__main__":
    main()
