"""Synthetic multi-beam SEM data with injected artifacts and their ground truth.

No public mSEM dataset carries artifact labels, so benchmarks and tests use this one: EM-like
tissue (cell outlines, nuclei of cell bodies, organelles, detector noise, slow change from
section to section, brightness differences between the hexagonal beam fields of a multi-beam
SEM) plus artifacts of the kinds seen in practice, each with random shape, size, strength and
position, about a third of them subtle.

Written as a webKnossos Zarr3 dataset: layer ``color`` (uint8, mags 1, 2-2-1, 4-4-1), layer
``artifact_mask`` (uint8 segmentation, value = artifact type id of ``models.vocab``, 0 = clean,
same mags; coarser mags keep the largest id of each block so thin scratches survive) and
``ground_truth.csv`` with one row per 140 x 140 grid patch (``x,y,z,w,h,label,type``, z-major
like :class:`server.pixels.grid.Grid`).

Ground-truth rule: an additive artifact (charging disc or ring, horseshoe arc, scratch) covers
the pixels it changes by at least :data:`VISIBLE_DELTA` grey levels; debris covers its opaque
part, a missing tile, a defocused region or a mis-exposed beam field all of its area. A patch is
``artifact`` when artifacts cover at least :data:`MIN_COVERAGE` of its pixels (so a sliver at
its border does not count); its type is the one covering most of it.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from models.vocab import ARTIFACT_TYPES, artifact_type_id, artifact_type_name
from server.errors import InvalidInput
from server.sim.artifacts import NOISE_SIGMA, PAINTERS, BeamFields, Canvas, window_around
from server.wklib import wk

Size = Literal["small", "medium", "large"]
PATCH = 140
VOXEL_SIZE = (32, 32, 35)
MIN_COVERAGE = 0.02  # share of a patch's pixels artifacts must cover to make it an artifact
SUBTLE_SHARE = 0.35  # share of artifacts drawn with the weak end of their strength range
_BLOCK_BYTES = 256 * 1024 * 1024  # largest (x, y, z) block of sections held before writing

# (width = height in pixels, sections): small <= 5,000 patches, medium ~20,000.
SHAPES: dict[str, tuple[int, int]] = {
    "small": (1960, 20),  # 14 x 14 x 20 = 3,920 patches
    "medium": (2800, 50),  # 20 x 20 x 50 = 20,000 patches
    "large": (5600, 64),  # 40 x 40 x 64 = 102,400 patches
}
KINDS = ("circular", "horseshoe", "scratch", "debris", "contrast", "defocus", "missing")
# Expected artifacts per megapixel of section, per kind; tuned so ~5% of patches are hit and
# every kind gets a fair share of them.
RATE_PER_MPX = {
    "circular": 0.17,
    "horseshoe": 0.17,
    "scratch": 0.05,
    "debris": 0.33,
    "contrast": 0.02,
    "defocus": 0.04,
    "missing": 0.03,
}


@dataclass(frozen=True)
class SynthSummary:
    path: Path
    n_patches: int
    n_artifact_patches: int
    seconds: float
    per_type: dict[str, int] = field(default_factory=dict)  # artifact patches by dominant type
    n_artifacts: dict[str, int] = field(default_factory=dict)  # artifacts injected, by type
    n_subtle: int = 0  # of the injected artifacts, how many were drawn subtle
    shape: tuple[int, int, int] = (0, 0, 0)  # (x, y, z) voxels at mag 1


def make_synthetic_dataset(
    out_dir: Path | str,
    *,
    seed: int = 0,
    size: Size = "small",
    progress: Callable[[int, int], None] | None = None,
    shape: tuple[int, int] | None = None,
    artifact_rate: float = 1.0,
) -> SynthSummary:
    """Write the dataset to ``out_dir`` (must not exist or be empty); the same ``seed`` gives
    the same pixels and ground truth. ``shape`` overrides the size preset with (width = height
    in pixels, a multiple of 140; number of sections), for quick tests; ``artifact_rate`` scales
    how many artifacts are injected (1.0: about 5% of patches). ``progress(done, total)`` is
    called after each section."""
    start = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput(f"{out} exists and is not an empty folder")
    if shape is None:
        if size not in SHAPES:
            raise InvalidInput(f"unknown size {size!r}: use small, medium, large or huge")
        shape = SHAPES[size]
    width, depth = shape
    if width < PATCH or width % PATCH or depth < 1:
        raise InvalidInput(f"width must be a positive multiple of {PATCH}, sections >= 1")
    if artifact_rate < 0:
        raise InvalidInput("artifact_rate must be >= 0")

    # Thin shards, one block of sections deep: the library's default 1024^3 shard would be
    # rewritten for every block and made writes ~30x slower.
    z_block = shard_depth(width)
    chunk_shape, shard_shape = (32, 32, z_block), (1024, 1024, z_block)
    ds = wk.Dataset(out, voxel_size=VOXEL_SIZE)
    color = ds.add_layer("color", wk.COLOR_CATEGORY, dtype="uint8", data_format="zarr3")
    mask = add_mask_layer(ds)
    factors = (1, 2, 4)
    color_mags = {
        f: color.add_mag(_mag(f), chunk_shape=chunk_shape, shard_shape=shard_shape) for f in factors
    }
    mask_mags = {
        f: mask.add_mag(_mag(f), chunk_shape=chunk_shape, shard_shape=shard_shape) for f in factors
    }

    tissue = _Tissue(np.random.default_rng([seed, 1]), width=width, depth=depth)
    beams = BeamFields(np.random.default_rng([seed, 3]), width=width)
    rng = np.random.default_rng([seed, 2])
    noise_rng = np.random.default_rng([seed, 4])
    counts = _artifact_counts(
        np.random.default_rng([seed, 5]), width=width, depth=depth, rate=artifact_rate
    )
    rows: list[tuple[int, int, int, int, int, str, str]] = []
    per_type: dict[str, int] = {}
    injected = {kind: 0 for kind in KINDS}
    n_subtle = 0
    for z0 in range(0, depth, z_block):
        z1 = min(depth, z0 + z_block)
        blocks = {f: np.empty((width // f, width // f, z1 - z0), np.uint8) for f in factors}
        mask_blocks = {f: np.empty((width // f, width // f, z1 - z0), np.uint8) for f in factors}
        for z in range(z0, z1):
            tile_ids, gain = beams.section(z)
            canvas = Canvas(
                image=tissue.section(z) * gain,
                labels=np.zeros((width, width), dtype=np.uint8),
                tile_ids=tile_ids,
                rng=rng,
            )
            for kind in KINDS:
                if kind == "defocus":  # the detector adds its noise after the beam
                    noise = noise_rng.standard_normal(canvas.image.shape, dtype=np.float32)
                    canvas.image += np.float32(NOISE_SIGMA) * noise
                for _ in range(counts[z, KINDS.index(kind)]):
                    subtle = bool(rng.random() < SUBTLE_SHARE)
                    PAINTERS[kind](canvas, subtle)
                    injected[kind] += 1
                    n_subtle += subtle
            # arrays are (y, x) here; webKnossos wants (x, y, z)
            np.clip(canvas.image, 0, 255, out=canvas.image)
            section = np.rint(canvas.image).astype(np.uint8).T
            labels = canvas.labels.T
            for f in factors:
                blocks[f][:, :, z - z0] = _downsample_mean(section, f)
                mask_blocks[f][:, :, z - z0] = _downsample_max(labels, f)
            rows.extend(ground_truth_rows(canvas.labels, z=z, per_type=per_type))
            if progress is not None:
                progress(z + 1, depth)
        for f in factors:
            color_mags[f].write(blocks[f], absolute_offset=(0, 0, z0), allow_resize=True)
            mask_mags[f].write(mask_blocks[f], absolute_offset=(0, 0, z0), allow_resize=True)

    return write_ground_truth(
        out, rows, started=start, per_type=per_type, injected=injected, n_subtle=n_subtle,
        shape=(width, width, depth),
    )  # fmt: skip


def write_ground_truth(
    out: Path,
    rows: list[tuple[int, int, int, int, int, str, str]],
    *,
    started: float,
    per_type: dict[str, int],
    injected: dict[str, int],
    n_subtle: int,
    shape: tuple[int, int, int],
) -> SynthSummary:
    """``ground_truth.csv`` of a written dataset, and the summary of what went into it."""
    with (out / "ground_truth.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["x", "y", "z", "w", "h", "label", "type"])
        writer.writerows(rows)
    return SynthSummary(
        path=out,
        n_patches=len(rows),
        n_artifact_patches=sum(1 for r in rows if r[5] == "artifact"),
        seconds=time.perf_counter() - started,
        per_type=dict(sorted(per_type.items())),
        n_artifacts=injected,
        n_subtle=n_subtle,
        shape=shape,
    )


def add_mask_layer(ds: Any) -> Any:
    """The ``artifact_mask`` segmentation layer: artifact type id per voxel, 0 = clean."""
    return ds.add_layer(
        "artifact_mask",
        wk.SEGMENTATION_CATEGORY,
        dtype="uint8",
        largest_segment_id=max(artifact_type_id(k) for k in KINDS),
        data_format="zarr3",
    )


def shard_depth(width: int) -> int:
    """Sections per shard (and per block written at once) of a ``width``-pixel dataset."""
    z_block = 32
    while z_block > 1 and width * width * z_block > _BLOCK_BYTES:
        z_block //= 2
    return z_block


def _artifact_counts(
    rng: np.random.Generator, *, width: int, depth: int, rate: float
) -> np.ndarray:
    """How many artifacts of each kind go into each section, ``(depth, len(KINDS))``: Poisson
    draws, plus one of each kind that drew none so every kind is present when ``rate > 0``."""
    expected = np.array([RATE_PER_MPX[k] for k in KINDS]) * width * width / 1e6 * rate
    counts = rng.poisson(np.broadcast_to(expected, (depth, len(KINDS))))
    if rate > 0:
        for k in np.flatnonzero(counts.sum(axis=0) == 0):
            counts[rng.integers(depth), k] += 1
    return counts


def _mag(factor: int) -> str:
    return "1" if factor == 1 else f"{factor}-{factor}-1"


# -- tissue --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Nucleus:
    cx: float
    cy: float
    cz: float
    radius: float  # px in x and y at its equator
    radius_z: float  # sections
    aspect: float
    angle: float


class _Tissue:
    """EM-like sections (noise-free, ``(y, x)`` float32) that change slowly with z."""

    def __init__(self, rng: np.random.Generator, *, width: int, depth: int) -> None:
        self.width = width
        self.rng = rng
        # two fields per structure, blended by z, so neighbouring sections look alike
        self.cells = [self._field(width // 8, 2.2) for _ in range(2)]
        self.bodies = [self._field(width // 64 + 2, 1.5) for _ in range(2)]
        self.organelles = [self._field(width // 4, 1.8) for _ in range(2)]
        self.phase = rng.uniform(0, 2 * np.pi)
        # nuclei of cell bodies: ellipsoids a few micrometres across, cut by every section
        n = rng.poisson(0.35 * width * width / 1e6 * max(1.0, depth / 40)) + 1
        self.nuclei = []
        for _ in range(n):
            radius = rng.uniform(90, 170)
            radius_z = radius * VOXEL_SIZE[0] / VOXEL_SIZE[2]
            self.nuclei.append(
                _Nucleus(
                    cx=rng.uniform(0, width),
                    cy=rng.uniform(0, width),
                    cz=rng.uniform(-0.5 * radius_z, depth + 0.5 * radius_z),
                    radius=radius,
                    radius_z=radius_z,
                    aspect=rng.uniform(0.75, 1.0),
                    angle=rng.uniform(0, np.pi),
                )
            )

    def _field(self, n: int, sigma: float) -> np.ndarray:
        f = ndimage.gaussian_filter(self.rng.standard_normal((n, n)).astype(np.float32), sigma)
        return (f / (f.std() + 1e-6)).astype(np.float32)

    def _upsample(self, f: np.ndarray) -> np.ndarray:
        return ndimage.zoom(f, self.width / f.shape[0], order=1)[: self.width, : self.width]

    def section(self, z: int) -> np.ndarray:
        t = self.phase + z * 0.07
        a, b = np.float32(np.cos(t)), np.float32(np.sin(t))
        cells = self._upsample(a * self.cells[0] + b * self.cells[1])
        membranes = np.exp(-((cells / np.float32(0.18)) ** 2))
        organelles = self._upsample(a * self.organelles[0] + b * self.organelles[1])
        bodies = self._upsample(a * self.bodies[0] + b * self.bodies[1])
        image = 160.0 + 18.0 * bodies
        image -= 60.0 * np.clip((organelles - 1.6) * 2.5, 0, 1)
        outside = np.ones_like(image)
        nucleus_terms: list[tuple[slice, slice, np.ndarray]] = []
        for nucleus in self.nuclei:
            cut = self._nucleus(nucleus, z, organelles, outside)
            if cut is not None:
                nucleus_terms.append(cut)
        image -= 85.0 * membranes * outside
        for ys, xs, term in nucleus_terms:
            image[ys, xs] += term
        return image.astype(np.float32, copy=False)

    def _nucleus(
        self, n: _Nucleus, z: int, texture: np.ndarray, outside: np.ndarray
    ) -> tuple[slice, slice, np.ndarray] | None:
        """The nucleus' cut at section ``z``: blanks cell outlines inside (``outside``) and
        returns its envelope and chromatin as a term to add."""
        h = 1.0 - ((z - n.cz) / n.radius_z) ** 2
        if h <= 0.05:
            return None
        r = n.radius * np.sqrt(h)
        ys, xs, dy, dx = window_around(self.width, self.width, n.cy, n.cx, r + 8)
        if dy.size == 0 or dx.size == 0:
            return None
        c, s = np.cos(n.angle), np.sin(n.angle)
        u = dx * c + dy * s
        v = (dy * c - dx * s) / n.aspect
        d = np.sqrt(u**2 + v**2)
        inside = np.clip(r - d + 0.5, 0, 1)  # soft edge, 1 inside
        outside[ys, xs] *= 1 - inside
        chromatin = np.clip(texture[ys, xs] - 0.6, 0, 1.5)
        rim = np.exp(-(((r - d) / 6.0) ** 2)) * inside
        envelope = np.exp(-(((d - r) / 1.6) ** 2))
        term = inside * (-10.0 - 22.0 * chromatin - 18.0 * rim) - 55.0 * envelope
        return ys, xs, term.astype(np.float32)


# -- ground truth and mags -----------------------------------------------------------------
def ground_truth_rows(
    labels: np.ndarray, *, z: int, per_type: dict[str, int]
) -> list[tuple[int, int, int, int, int, str, str]]:
    """One row per grid patch of section ``z`` (row-major y then x, like the grid) from its
    ``(y, x)`` label image, whose sides are multiples of :data:`PATCH`."""
    n_types = len(ARTIFACT_TYPES) + 1
    n_x = labels.shape[1] // PATCH
    tiles = patch_tiles(labels)
    offsets = (np.arange(tiles.shape[0]) * n_types)[:, None]
    counts = np.bincount((tiles + offsets).ravel(), minlength=tiles.shape[0] * n_types)
    counts = counts.reshape(-1, n_types)[:, 1:]
    covered = counts.sum(axis=1)
    dominant = np.argmax(counts, axis=1) + 1
    rows = []
    for i in range(tiles.shape[0]):
        ty, tx = divmod(i, n_x)
        if covered[i] >= MIN_COVERAGE * PATCH * PATCH:
            kind = artifact_type_name(int(dominant[i]))
            assert kind is not None
            per_type[kind] = per_type.get(kind, 0) + 1
            rows.append((tx * PATCH, ty * PATCH, z, PATCH, PATCH, "artifact", kind))
        else:
            rows.append((tx * PATCH, ty * PATCH, z, PATCH, PATCH, "clean", ""))
    return rows


def patch_tiles(image: np.ndarray) -> np.ndarray:
    """The grid patches of a ``(y, x)`` image, one row of pixels each, row-major like the grid."""
    n_y, n_x = image.shape[0] // PATCH, image.shape[1] // PATCH
    return (
        image[: n_y * PATCH, : n_x * PATCH]
        .reshape(n_y, PATCH, n_x, PATCH)
        .transpose(0, 2, 1, 3)
        .reshape(n_y * n_x, PATCH * PATCH)
    )


def _downsample_mean(section: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block of a 2-D uint8 section."""
    if factor == 1:
        return section
    x, y = section.shape[0] // factor, section.shape[1] // factor
    view = section[: x * factor, : y * factor].reshape(x, factor, y, factor)
    return np.rint(view.mean(axis=(1, 3), dtype=np.float32)).astype(np.uint8)


def _downsample_max(section: np.ndarray, factor: int) -> np.ndarray:
    """Largest value of each block: a thin artifact stays visible in coarse mags."""
    if factor == 1:
        return section
    x, y = section.shape[0] // factor, section.shape[1] // factor
    view = section[: x * factor, : y * factor].reshape(x, factor, y, factor)
    return view.max(axis=(1, 3))
