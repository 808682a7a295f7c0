"""Patch I/O benchmark: how fast batches of 140 x 140 patches come out of a dataset.

Measures, on one dataset (default: a synthetic dataset made on the fly, `small`, seed 0):
- naive: one ``MagView.read`` per patch (the library's convenient path), for reference;
- random: ``PatchSource.read_patches`` on batches of random grid patches in random order;
- grid-ordered: batches that walk the grid in its own order (section by section);
- chunk-ordered: batches that walk the grid in storage order (block of chunk-deep sections,
  then rows, columns, sections), as a scoring run streams the pool;
- floor: the chunks holding the same patches, read whole, block by block, straight from
  tensorstore with no cutting into patches (what the storage can give at best).

Every run starts with a cold cache (a fresh ``PatchSource``); each is repeated and the best
time kept. Prints a table and writes ``bench/results/patch_io.json``.

    python bench/patch_io.py [--dataset PATH | --size small|medium] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

from server.pixels.grid import Grid
from server.pixels.source import PatchSource
from server.pixels.tensorstore import open_tensorstore
from server.wklib import wk

PATCH = 140


def _best_of(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def storage_order(grid: Grid, chunk_depth: int) -> np.ndarray:
    """Grid indices sorted by block of ``chunk_depth`` sections, then row, column, section."""
    nz, ny, nx = grid.shape
    z, y, x = np.unravel_index(np.arange(len(grid)), (nz, ny, nx))
    return np.lexsort((z, x, y, z // chunk_depth))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, default=None)
    parser.add_argument("--size", choices=("small", "medium"), default="small")
    parser.add_argument("--patches", type=int, default=None, help="default: the whole grid")
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
        from server.sim.synth import make_synthetic_dataset

        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "synth"
        print(f"making a synthetic {args.size} dataset ...", flush=True)
        made = make_synthetic_dataset(path, seed=0, size=args.size)
        print(f"  {made.n_patches:,} patches in {made.seconds:.1f} s", flush=True)

    with PatchSource.open(path) as probe:
        info, chunk_depth = probe.info, probe.chunk_depth
    grid = Grid(offset=info.bbox_offset, size=info.bbox_size, mag=info.mag, patch=PATCH)
    n = min(args.patches or len(grid), len(grid))
    rng = np.random.default_rng(0)
    random_idx = rng.choice(len(grid), size=n, replace=False)
    grid_idx = np.arange(n)
    chunk_idx = storage_order(grid, chunk_depth)[:n]

    def batches(indices: np.ndarray) -> Callable[[], None]:
        def run() -> None:
            with PatchSource.open(path) as source:  # cold cache every time
                for start in range(0, len(indices), args.batch):
                    origins = grid.origins(indices[start : start + args.batch])
                    source.read_patches(origins, size_px=PATCH)

        return run

    t_random = _best_of(batches(random_idx), args.repeats)
    t_grid = _best_of(batches(grid_idx), args.repeats)
    t_chunk = _best_of(batches(chunk_idx), args.repeats)

    # Floor: per block of sections, the box of chunks holding the chunk-ordered patches, read
    # whole with no cutting; as one request per block, and in bands of chunk rows all in
    # flight at once. The faster of the two counts.
    mag_view = wk.Dataset.open(str(path)).get_layer(info.layer).get_mag(info.mag[0])
    cells = grid.origins(chunk_idx) // np.asarray(info.mag)
    boxes = []
    for block in np.unique(cells[:, 2] // chunk_depth):
        inside = cells[cells[:, 2] // chunk_depth == block]
        boxes.append((inside.min(axis=0), inside.max(axis=0) + np.array([PATCH, PATCH, 1])))
    floor_bytes = sum(int(np.prod(hi - lo)) for lo, hi in boxes)

    def floor(band: int | None) -> Callable[[], None]:
        def run() -> None:
            array = open_tensorstore(mag_view)  # cold cache every time
            pending = []
            for lo, hi in boxes:
                step = band or int(hi[1] - lo[1])
                for y in range(int(lo[1]), int(hi[1]), step):
                    y_end = min(int(hi[1]), y + step)
                    region = array[:, lo[0] : hi[0], y:y_end, lo[2] : hi[2]]
                    pending.append(region.read(order="F"))
            for future in pending:
                future.result()

        return run

    t_floor = min(_best_of(floor(band), args.repeats) for band in (None, 256))

    naive_org = grid.origins(random_idx[: args.naive_patches])

    def naive() -> None:
        for x, y, z in naive_org:
            mag_view.read(absolute_offset=(int(x), int(y), int(z)), size=(PATCH, PATCH, 1))

    t_naive = _best_of(naive, 1)

    results = {
        "dataset": str(args.dataset or f"synthetic {args.size} (seed 0)"),
        "data_format": info.data_format,
        "chunk_depth": chunk_depth,
        "patches": n,
        "batch": args.batch,
        "repeats": args.repeats,
        "cache": "cold at the start of every run",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "webknossos": metadata.version("webknossos"),
        },
        "naive_patches_per_s": len(naive_org) / t_naive,
        "random_patches_per_s": n / t_random,
        "grid_ordered_patches_per_s": n / t_grid,
        "chunk_ordered_patches_per_s": n / t_chunk,
        "floor_patches_per_s": n / t_floor,
        "floor_mb_per_s": floor_bytes / 1e6 / t_floor,
    }
    results["chunk_ordered_fraction_of_floor"] = t_floor / t_chunk
    print(f"{'read path':<32}{'patches/s':>12}")
    for key, label in (
        ("naive_patches_per_s", "naive MagView.read"),
        ("random_patches_per_s", "random order (batched)"),
        ("grid_ordered_patches_per_s", "grid order (batched)"),
        ("chunk_ordered_patches_per_s", "chunk order (batched)"),
        ("floor_patches_per_s", "raw floor (whole chunks)"),
    ):
        print(f"{label:<32}{results[key]:>12,.0f}")
    print(f"chunk-ordered reaches {results['chunk_ordered_fraction_of_floor']:.0%} of the floor")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
