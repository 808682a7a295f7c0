"""Synthetic multi-beam SEM data with injected artifacts and their ground truth.

No public mSEM dataset carries artifact labels, so benchmarks and tests use this one: EM-like
tissue (cell outlines, cell bodies, organelles, noise, slow change from section to section,
brightness differences between the beam tiles of a multi-beam SEM) plus artifacts of the kinds
seen in practice, each with random shape, size, strength and position, many of them subtle.

Written as a webKnossos Zarr3 dataset: layer ``color`` (uint8, mags 1, 2-2-1, 4-4-1), layer
``artifact_mask`` (uint8 segmentation, value = artifact type id, 0 = clean) and
``ground_truth.csv`` with one row per 140 x 140 grid patch (``x,y,z,w,h,label,type``). A patch
is ``artifact`` when at least :data:`MIN_COVERAGE` of its pixels belong to an artifact, so a
sliver at its border does not count; its type is the type covering most of it.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage

from models.vocab import ARTIFACT_TYPES, artifact_type_id, artifact_type_name
from server.errors import InvalidInput

Size = Literal["small", "medium", "large"]
PATCH = 140
VOXEL_SIZE = (32, 32, 35)
MIN_COVERAGE = 0.02  # share of a patch's pixels an artifact must cover to make it an artifact
Z_BLOCK = 32  # sections written at once: one shard deep

# (width = height in pixels, sections): small <= 5,000 patches, medium ~20,000.
SHAPES: dict[str, tuple[int, int]] = {
    "small": (1960, 20),  # 14 x 14 x 20 = 3,920 patches
    "medium": (2800, 50),  # 20 x 20 x 50 = 20,000 patches
    "large": (5600, 64),  # 40 x 40 x 64 = 102,400 patches
}
KINDS = ("circular", "horseshoe", "scratch", "debris", "missing", "defocus")
# Expected artifacts per megapixel of section, per kind; tuned so ~5% of patches are hit.
RATE_PER_MPX = {
    "circular": 0.2,
    "horseshoe": 0.17,
    "scratch": 0.045,
    "debris": 0.28,
    "missing": 0.04,
    "defocus": 0.07,
}


@dataclass(frozen=True)
class SynthSummary:
    path: Path
    n_patches: int
    n_artifact_patches: int
    seconds: float
    per_type: dict[str, int] = field(default_factory=dict)


def make_synthetic_dataset(
    out_dir: Path | str,
    *,
    seed: int = 0,
    size: Size = "small",
    progress: Callable[[int, int], None] | None = None,
    shape: tuple[int, int] | None = None,
    artifact_rate: float = 1.0,
) -> SynthSummary:
    """Write the dataset to ``out_dir`` (must not exist or be empty). ``shape`` overrides the
    size preset with (width in pixels, number of sections) for quick tests; ``artifact_rate``
    scales how many artifacts are injected (1.0: about 5% of patches)."""
    from server.wk import wk

    start = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InvalidInput(f"{out} exists and is not empty")
    if shape is None:
        if size not in SHAPES:
            raise InvalidInput(f"unknown size {size!r}: use small, medium or large")
        shape = SHAPES[size]
    width, depth = shape
    if width < PATCH or width % PATCH or depth < 1:
        raise InvalidInput(f"width must be a positive multiple of {PATCH}, sections >= 1")

    ds = wk.Dataset(out, voxel_size=VOXEL_SIZE)
    color = ds.add_layer("color", wk.COLOR_CATEGORY, dtype="uint8", data_format="zarr3")
    mask = ds.add_layer(
        "artifact_mask",
        wk.SEGMENTATION_CATEGORY,
        dtype="uint8",
        largest_segment_id=max(artifact_type_id(k) for k in KINDS),
        data_format="zarr3",
    )
    chunks = {"chunk_shape": (32, 32, Z_BLOCK), "shard_shape": (1024, 1024, Z_BLOCK)}
    mags = {
        1: color.add_mag(1, **chunks),
        2: color.add_mag("2-2-1", **chunks),
        4: color.add_mag("4-4-1", **chunks),
    }
    mask_mag = mask.add_mag(1, **chunks)

    tissue = _Tissue(np.random.default_rng([seed, 1]), width)
    rng = np.random.default_rng([seed, 2])
    rows: list[tuple[int, int, int, int, int, str, str]] = []
    per_type: dict[str, int] = {}
    n_tiles = width // PATCH
    for z0 in range(0, depth, Z_BLOCK):
        z1 = min(depth, z0 + Z_BLOCK)
        block = np.empty((width, width, z1 - z0), dtype=np.uint8)
        mask_block = np.zeros((width, width, z1 - z0), dtype=np.uint8)
        for z in range(z0, z1):
            image = tissue.section(z)
            labels = np.zeros(image.shape, dtype=np.uint8)
            _inject_artifacts(image, labels, rng, rate=artifact_rate)
            # arrays are (y, x) here; webKnossos wants (x, y, z)
            block[:, :, z - z0] = np.clip(image, 0, 255).astype(np.uint8).T
            mask_block[:, :, z - z0] = labels.T
            rows.extend(_ground_truth(labels, z=z, n_tiles=n_tiles, per_type=per_type))
            if progress is not None:
                progress(z + 1, depth)
        mags[1].write(block, absolute_offset=(0, 0, z0), allow_resize=True)
        mask_mag.write(mask_block, absolute_offset=(0, 0, z0), allow_resize=True)
        for factor in (2, 4):
            mags[factor].write(
                _downsample(block, factor), absolute_offset=(0, 0, z0), allow_resize=True
            )

    with (out / "ground_truth.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["x", "y", "z", "w", "h", "label", "type"])
        writer.writerows(rows)
    n_artifact = sum(1 for r in rows if r[5] == "artifact")
    return SynthSummary(
        path=out,
        n_patches=len(rows),
        n_artifact_patches=n_artifact,
        seconds=time.perf_counter() - start,
        per_type=dict(sorted(per_type.items())),
    )


class _Tissue:
    """EM-like sections that change slowly with z."""

    def __init__(self, rng: np.random.Generator, width: int) -> None:
        self.width = width
        self.rng = rng
        coarse = width // 8
        # two fields per structure, blended by z, so neighbouring sections look alike
        self.cells = [self._field(coarse, 2.2) for _ in range(2)]
        self.bodies = [self._field(width // 64 + 2, 1.5) for _ in range(2)]
        self.organelles = [self._field(width // 4, 1.8) for _ in range(2)]
        self.tiles = self._beam_tiles(width)

    def _field(self, n: int, sigma: float) -> np.ndarray:
        f = ndimage.gaussian_filter(self.rng.standard_normal((n, n)).astype(np.float32), sigma)
        return (f / (f.std() + 1e-6)).astype(np.float32)

    def _upsample(self, f: np.ndarray) -> np.ndarray:
        return ndimage.zoom(f, self.width / f.shape[0], order=1)[: self.width, : self.width]

    def _beam_tiles(self, width: int) -> np.ndarray:
        """Gain per pixel: hexagonally packed beam fields, each a little brighter or darker."""
        tile = 280
        yy, xx = np.mgrid[0:width, 0:width]
        row = yy // int(tile * 0.866)
        col = (xx + (row % 2) * (tile // 2)) // tile
        ids = row * 1000 + col
        unique, inverse = np.unique(ids, return_inverse=True)
        gains = self.rng.normal(1.0, 0.06, size=unique.size).astype(np.float32)
        return gains[inverse].reshape(width, width)

    def section(self, z: int) -> np.ndarray:
        t = z * 0.07
        a, b = np.cos(t), np.sin(t)
        cells = self._upsample(a * self.cells[0] + b * self.cells[1])
        membranes = np.exp(-((cells / 0.18) ** 2))
        bodies = self._upsample(a * self.bodies[0] + b * self.bodies[1])
        organelles = self._upsample(a * self.organelles[0] + b * self.organelles[1])
        dark_spots = np.clip(organelles - 1.6, 0, None) * 2.5
        image = 160.0 + 18.0 * bodies - 85.0 * membranes - 60.0 * np.clip(dark_spots, 0, 1)
        image = image * self.tiles
        image += self.rng.normal(0, 9.0, size=image.shape).astype(np.float32)
        return image.astype(np.float32)


def _inject_artifacts(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, rate: float
) -> None:
    megapixels = image.size / 1e6
    for kind in KINDS:
        for _ in range(rng.poisson(RATE_PER_MPX[kind] * megapixels * rate)):
            subtle = rng.random() < 0.35
            region = PAINTERS[kind](image, rng, subtle)
            labels[region & (labels == 0)] = artifact_type_id(kind)


def _disc(shape: tuple[int, ...], cy: float, cx: float) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.ogrid[0 : shape[0], 0 : shape[1]]
    return yy - cy, xx - cx


def _paint_circular(image: np.ndarray, rng: np.random.Generator, subtle: bool) -> np.ndarray:
    """Charging: a bright disc or ring with a soft edge."""
    h, w = image.shape
    r = rng.uniform(35, 120)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    dy, dx = _disc(image.shape, cy, cx)
    dist = np.sqrt(dy**2 + dx**2)
    strength = rng.uniform(18, 30) if subtle else rng.uniform(40, 90)
    if rng.random() < 0.5:  # ring
        thickness = rng.uniform(6, 16)
        profile = np.exp(-(((dist - r) / thickness) ** 2))
    else:  # disc
        profile = 1.0 / (1.0 + np.exp((dist - r) / 4.0))
    image += strength * profile
    return profile > 0.3


def _paint_horseshoe(image: np.ndarray, rng: np.random.Generator, subtle: bool) -> np.ndarray:
    """An arc of a ring, open on one side."""
    h, w = image.shape
    r = rng.uniform(40, 110)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    dy, dx = _disc(image.shape, cy, cx)
    dist = np.sqrt(dy**2 + dx**2)
    angle = np.arctan2(dy, dx)
    opening = rng.uniform(0, 2 * np.pi)
    span = rng.uniform(np.pi * 0.9, np.pi * 1.6)
    in_arc = np.mod(angle - opening, 2 * np.pi) < span
    thickness = rng.uniform(7, 18)
    profile = np.exp(-(((dist - r) / thickness) ** 2)) * in_arc
    sign = 1 if rng.random() < 0.6 else -1
    strength = rng.uniform(18, 30) if subtle else rng.uniform(45, 90)
    image += sign * strength * profile
    return profile > 0.3


def _paint_scratch(image: np.ndarray, rng: np.random.Generator, subtle: bool) -> np.ndarray:
    """A long thin line across several patches."""
    h, w = image.shape
    length = rng.uniform(400, 1400)
    y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
    theta = rng.uniform(0, np.pi)
    y1, x1 = y0 + length * np.sin(theta), x0 + length * np.cos(theta)
    dy, dx = _disc(image.shape, y0, x0)
    vy, vx = (y1 - y0) / length, (x1 - x0) / length
    along = dy * vy + dx * vx
    across = np.abs(dy * vx - dx * vy)
    width = rng.uniform(2.0, 5.0)
    profile = np.exp(-((across / width) ** 2)) * ((along > 0) & (along < length))
    strength = rng.uniform(25, 40) if subtle else rng.uniform(60, 120)
    image += (1 if rng.random() < 0.7 else -1) * strength * profile
    return profile > 0.3


def _paint_debris(image: np.ndarray, rng: np.random.Generator, subtle: bool) -> np.ndarray:
    """An opaque irregular blob."""
    h, w = image.shape
    r = rng.uniform(18, 70)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    dy, dx = _disc(image.shape, cy, cx)
    lobes, phase = rng.integers(2, 6), rng.uniform(0, 2 * np.pi)
    dist = np.sqrt(dy**2 + dx**2) * (1 + 0.25 * np.sin(lobes * np.arctan2(dy, dx) + phase))
    blob = dist < r
    level = rng.uniform(60, 110) if subtle else rng.uniform(5, 45)
    opacity = rng.uniform(0.5, 0.7) if subtle else rng.uniform(0.85, 1.0)
    image[blob] = (1 - opacity) * image[blob] + opacity * level
    return blob


def _paint_missing(image: np.ndarray, rng: np.random.Generator, subtle: bool) -> np.ndarray:
    """A missing or mis-exposed beam tile: a constant rectangle."""
    h, w = image.shape
    th, tw = int(rng.uniform(100, 320)), int(rng.uniform(100, 320))
    y0, x0 = int(rng.uniform(0, h - th)), int(rng.uniform(0, w - tw))
    value = rng.uniform(120, 175) if subtle else rng.choice([0.0, 255.0, rng.uniform(20, 230)])
    image[y0 : y0 + th, x0 : x0 + tw] = value
    region = np.zeros(image.shape, dtype=bool)
    region[y0 : y0 + th, x0 : x0 + tw] = True
    return region


def _paint_defocus(image: np.ndarray, rng: np.random.Generator, subtle: bool) -> np.ndarray:
    """A blurred region."""
    h, w = image.shape
    th, tw = int(rng.uniform(150, 380)), int(rng.uniform(150, 380))
    y0, x0 = int(rng.uniform(0, h - th)), int(rng.uniform(0, w - tw))
    sigma = rng.uniform(2.0, 3.0) if subtle else rng.uniform(3.5, 7.0)
    window = image[y0 : y0 + th, x0 : x0 + tw]
    image[y0 : y0 + th, x0 : x0 + tw] = ndimage.gaussian_filter(window, sigma)
    region = np.zeros(image.shape, dtype=bool)
    region[y0 : y0 + th, x0 : x0 + tw] = True
    return region


PAINTERS: dict[str, Callable[[np.ndarray, np.random.Generator, bool], np.ndarray]] = {
    "circular": _paint_circular,
    "horseshoe": _paint_horseshoe,
    "scratch": _paint_scratch,
    "debris": _paint_debris,
    "missing": _paint_missing,
    "defocus": _paint_defocus,
}


def _ground_truth(
    labels: np.ndarray, *, z: int, n_tiles: int, per_type: dict[str, int]
) -> list[tuple[int, int, int, int, int, str, str]]:
    """One row per grid patch of section ``z`` (row-major y then x, like the grid)."""
    n_types = len(ARTIFACT_TYPES) + 1
    tiles = labels.reshape(n_tiles, PATCH, n_tiles, PATCH).transpose(0, 2, 1, 3)
    tiles = tiles.reshape(n_tiles, n_tiles, PATCH * PATCH)
    counts = np.stack([(tiles == t).sum(axis=2) for t in range(1, n_types)], axis=2)
    covered = counts.sum(axis=2)
    rows = []
    for ty in range(n_tiles):
        for tx in range(n_tiles):
            if covered[ty, tx] >= MIN_COVERAGE * PATCH * PATCH:
                kind = artifact_type_name(int(np.argmax(counts[ty, tx])) + 1)
                per_type[kind] = per_type.get(kind, 0) + 1
                rows.append((tx * PATCH, ty * PATCH, z, PATCH, PATCH, "artifact", kind))
            else:
                rows.append((tx * PATCH, ty * PATCH, z, PATCH, PATCH, "clean", ""))
    return rows


def _downsample(block: np.ndarray, factor: int) -> np.ndarray:
    x, y, z = block.shape
    view = block[: x - x % factor, : y - y % factor].astype(np.float32)
    view = view.reshape(x // factor, factor, y // factor, factor, z).mean(axis=(1, 3))
    return np.round(view).astype(np.uint8)
