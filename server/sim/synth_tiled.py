"""A synthetic dataset of a million patches and more, on the disk of a few sections.

:func:`make_repeated_dataset` writes ``written`` real sections with
:func:`server.sim.synth.make_synthetic_dataset`, grows every layer's bounding box to ``depth``
sections and makes each further block of sections a hard link to the shard files of a written
block: webKnossos reads them as any other shard (same compression, same chunk reads), so a
patch of section 300 costs what a patch of section 4 does, and the disk holds the written
sections once. ``ground_truth.csv`` repeats the written sections' rows with their new ``z``.

Repeated sections are exact copies, which makes the dataset no harder to learn than its
written part; it is meant for scale (latency, memory, throughput), not for label efficiency.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from server.errors import InvalidInput
from server.sim.synth import PATCH, SynthSummary, make_synthetic_dataset, shard_depth
from server.wklib import wk

# (width = height in pixels, sections, sections written): 50 x 50 x 400 = 1,000,000 patches
# on the disk of 8 sections (~20,000 patches, about what ``medium`` takes)
HUGE = (7000, 400, 8)


def make_repeated_dataset(
    out_dir: Path | str,
    *,
    seed: int = 0,
    width: int = HUGE[0],
    depth: int = HUGE[1],
    written: int = HUGE[2],
    progress: Callable[[int, int], None] | None = None,
) -> SynthSummary:
    """Write ``written`` sections of a ``width`` x ``width`` dataset and repeat them to
    ``depth`` sections (``written`` must fill whole blocks of shards)."""
    start = time.perf_counter()
    if depth < written or written < 1:
        raise InvalidInput("depth must be at least the sections written, and written >= 1")
    block = shard_depth(width)
    if written % block:
        raise InvalidInput(
            f"a {width} px wide dataset keeps {block} sections per shard: write a multiple of it"
        )
    summary = make_synthetic_dataset(out_dir, seed=seed, shape=(width, written), progress=progress)
    out = Path(summary.path)
    dataset = wk.Dataset.open(out)
    for layer in dataset.layers.values():
        layer.bounding_box = wk.BoundingBox((0, 0, 0), (width, width, depth))
        for mag in layer.mags.values():
            _link_blocks(Path(mag.path), written=written, depth=depth)
    artifacts = _repeat_ground_truth(out / "ground_truth.csv", written=written, depth=depth)
    per_section = (width // PATCH) ** 2
    return replace(
        summary,
        n_patches=per_section * depth,
        n_artifact_patches=artifacts,
        seconds=time.perf_counter() - start,
        shape=(width, width, depth),
    )


def _link_blocks(mag_dir: Path, *, written: int, depth: int) -> None:
    """Hard links from every shard of blocks past the written sections to a written one."""
    meta = json.loads((mag_dir / "zarr.json").read_text())
    block = int(meta["chunk_grid"]["configuration"]["chunk_shape"][-1])  # sections per shard
    have = written // block
    wanted = -(-depth // block)
    for shard in list((mag_dir / "c").rglob("*")):
        if not shard.is_file() or int(shard.name) >= have:
            continue
        for z_block in range(have + int(shard.name), wanted, have):
            target = shard.with_name(str(z_block))
            if not target.exists():
                os.link(shard, target)


def _repeat_ground_truth(path: Path, *, written: int, depth: int) -> int:
    """Append the rows of repeated sections (z-major, as the grid); artifact patches in all."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    z_col, label_col = header.index("z"), header.index("label")
    artifacts = sum(1 for r in body if r[label_col] == "artifact")
    total = artifacts
    with path.open("a", newline="") as fh:
        writer = csv.writer(fh)
        for z0 in range(written, depth, written):
            for r in body:
                z = z0 + int(r[z_col])
                if z < depth:
                    writer.writerow([*r[:z_col], z, *r[z_col + 1 :]])
                    total += r[label_col] == "artifact"
    return total
