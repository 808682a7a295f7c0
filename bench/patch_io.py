"""Patch I/O benchmark: how fast batches of 140 x 140 patches come out of a dataset.

Measures, on one dataset (default: a synthetic `small` dataset made on the fly):
- naive: one ``MagView.read`` per patch (the library's convenient path), for reference;
- random: ``PatchSource.read_patches`` on batches of random grid patches in random order;
- chunk-ordered: ``read_patches`` on batches that walk the grid in storage order;
- floor: the same bytes as the chunk-ordered run, read as whole blocks straight from
  tensorstore with no cutting into patches (what the storage can give at best).

Prints a table and writes ``bench/results/patch_io.json``.

    python bench/patch_io.py [--dataset PATH] [--patches 4000] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from server.grid import Grid
from server.patches import PatchSource
from server.wk import wk


def _best_of(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, default=None)
    parser.add_argument("--patches", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--naive-patches", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "patch_io.json"
    )
    args = parser.parse_args()

    tmp = None
    path = args.dataset
    if path is None:
        from server.synth import make_synthetic_dataset

        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "synth"
        print("making a synthetic small dataset ...", flush=True)
        make_synthetic_dataset(path, seed=0, size="small")

    source = PatchSource.open(path)
    info = source.info
    grid = Grid(offset=info.bbox_offset, size=info.bbox_size, mag=info.mag, patch=140, stride=140)
    n = min(args.patches, len(grid))
    patch_bytes = 140 * 140
    rng = np.random.default_rng(0)

    random_idx = rng.choice(len(grid), size=n, replace=False)
    ordered_idx = np.arange(n)  # storage order: slice by slice, row by row

    def run(indices: np.ndarray) -> None:
        for start in range(0, len(indices), args.batch):
            source.read_patches(grid.origins(indices[start : start + args.batch]), size_px=140)

    # Fresh sources so the cache pool starts cold for each measurement's first repeat.
    source = PatchSource.open(path)
    t_random = _best_of(lambda: run(random_idx), args.repeats)
    source = PatchSource.open(path)
    t_ordered = _best_of(lambda: run(ordered_idx), args.repeats)

    # Floor: the slices covered by the ordered run, read as whole blocks (no per-patch work).
    _, ny, nx = grid.shape
    slices = -(-n // (ny * nx))
    ts_array = (
        wk.Dataset.open(str(path)).get_layer(info.layer).get_mag(info.mag[0]).get_zarr_array()
    )
    x0, y0, z0 = (info.bbox_offset[i] // info.mag[i] for i in range(3))
    width, height = nx * 140, ny * 140

    def floor() -> None:
        step = 32
        for z in range(z0, z0 + slices, step):
            ts_array[
                :, x0 : x0 + width, y0 : y0 + height, z : min(z + step, z0 + slices)
            ].read().result()

    t_floor = _best_of(floor, args.repeats)
    floor_bytes = width * height * slices

    mag_view = wk.Dataset.open(str(path)).get_layer(info.layer).get_mag(info.mag[0])
    naive_idx = random_idx[: args.naive_patches]
    naive_org = grid.origins(naive_idx)

    def naive() -> None:
        for x, y, z in naive_org:
            mag_view.read(absolute_offset=(int(x), int(y), int(z)), size=(140, 140, 1))

    t_naive = _best_of(naive, 1)

    results = {
        "dataset": str(args.dataset or "synthetic small (seed 0)"),
        "data_format": info.data_format,
        "patches": n,
        "batch": args.batch,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "naive_patches_per_s": len(naive_idx) / t_naive,
        "random_patches_per_s": n / t_random,
        "chunk_ordered_patches_per_s": n / t_ordered,
        "floor_patches_per_s": floor_bytes / patch_bytes / t_floor,
        "floor_mb_per_s": floor_bytes / 1e6 / t_floor,
    }
    results["chunk_ordered_fraction_of_floor"] = (
        results["chunk_ordered_patches_per_s"] / results["floor_patches_per_s"]
    )
    print(f"{'read path':<28}{'patches/s':>12}")
    for key, label in (
        ("naive_patches_per_s", "naive MagView.read"),
        ("random_patches_per_s", "random order (batched)"),
        ("chunk_ordered_patches_per_s", "chunk-ordered (batched)"),
        ("floor_patches_per_s", "raw floor (whole chunks)"),
    ):
        print(f"{label:<28}{results[key]:>12,.0f}")
    print(f"chunk-ordered reaches {results['chunk_ordered_fraction_of_floor']:.0%} of the floor")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
