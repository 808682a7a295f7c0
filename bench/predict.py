"""Dense artifact prediction: one fully convolutional pass vs. one pass per patch.

    python bench/predict.py [--dataset PATH] [--size 1400] [--stride 35] [--sections 2]

Scores every 140 x 140 patch position at ``--stride`` over a ``--size`` square of each
section two ways with the same classifier: the naive loop (cut every overlapping patch, one
forward pass each, batched) and ``Classifier.dense`` (the encoder runs once over the tile and
pooling windows stand in for the patches). Prints voxels/s of both, the speed-up and how well
the two maps agree; writes bench/results/predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WEBKNOSSOS_SKIP_VERSION_CHECK", "True")

from models.networks import Classifier  # noqa: E402
from server.pixels.source import PatchSource  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=None)
    parser.add_argument("--size", type=int, default=1400)
    parser.add_argument("--stride", type=int, default=35)
    parser.add_argument("--sections", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "predict.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    tmp = None
    path = args.dataset
    if path is None:
        from server.sim.synth import make_synthetic_dataset

        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "synth"
        make_synthetic_dataset(path, seed=0, shape=(args.size, args.sections))
    torch.manual_seed(0)
    model = Classifier().eval()  # weights do not change the cost; agreement is checked below
    patch, stride, size = 140, args.stride, args.size
    positions = (size - patch) // stride + 1
    dense_s = naive_s = 0.0
    diffs = []
    with PatchSource.open(path, layer="color", mag=1) as source:
        for z in range(args.sections):
            tile = source.read_region((0, 0, z), (size, size)).astype(np.float32)
            tile = (tile - tile.mean()) / (tile.std() + 1e-6)
            x = torch.from_numpy(tile)[None, None]
            start = time.perf_counter()
            dense = model.dense(x, patch=patch, stride=stride)[0, 0].numpy()
            dense_s += time.perf_counter() - start

            start = time.perf_counter()
            naive = np.empty((positions, positions), dtype=np.float32)
            tops = [(i * stride, j * stride) for i in range(positions) for j in range(positions)]
            with torch.no_grad():
                for b in range(0, len(tops), 256):
                    chunk = tops[b : b + 256]
                    batch = torch.stack([x[0, :, r : r + patch, c : c + patch] for r, c in chunk])
                    p = torch.sigmoid(model(batch)[0]).numpy()
                    for (r, c), v in zip(chunk, p, strict=True):
                        naive[r // stride, c // stride] = v
            naive_s += time.perf_counter() - start
            n = min(dense.shape[0], positions)
            diffs.append(np.abs(dense[:n, :n] - naive[:n, :n]))
    voxels = size * size * args.sections
    diff = np.concatenate([d.ravel() for d in diffs])
    result = {
        "region": f"{size} x {size} x {args.sections} voxels",
        "stride": stride,
        "patch_positions": positions * positions * args.sections,
        "dense_voxels_per_s": voxels / dense_s,
        "naive_voxels_per_s": voxels / naive_s,
        "speedup": naive_s / dense_s,
        "mean_abs_difference": float(diff.mean()),
        "max_abs_difference": float(diff.max()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "device": "cpu",
    }
    print(
        f"dense: {result['dense_voxels_per_s']:,.0f} voxels/s   naive: {result['naive_voxels_per_s']:,.0f} voxels/s   speed-up {result['speedup']:.1f}x"
    )
    print(
        f"p(artifact) difference dense vs naive: mean {result['mean_abs_difference']:.4f}, max {result['max_abs_difference']:.4f} (zero padding at patch borders)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
