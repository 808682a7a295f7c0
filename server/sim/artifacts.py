"""The artifacts of the synthetic data, painted onto any section: charging discs and rings,
horseshoe arcs, scratches, debris, mis-exposed beam fields, defocus and missing tiles, each with
random shape, size, strength and position. Each painter also marks the pixels it covers
(see :data:`VISIBLE_DELTA`) in the canvas's label image."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from models.vocab import artifact_type_id

VISIBLE_DELTA = 15.0  # grey levels an additive artifact must add to a pixel to cover it
NOISE_SIGMA = 9.0  # detector noise, grey levels


@dataclass
class Canvas:
    image: np.ndarray  # float32 (y, x), painted in place
    labels: np.ndarray  # uint8 (y, x): artifact type id, 0 = clean
    tile_ids: np.ndarray  # beam field of each pixel
    rng: np.random.Generator


def window_around(
    height: int, width: int, cy: float, cx: float, reach: float
) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """The part of the image within ``reach`` of ``(cy, cx)``, with offsets from the centre
    as a column (dy) and a row (dx)."""
    y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach) + 1)
    x0, x1 = max(0, int(cx - reach)), min(width, int(cx + reach) + 1)
    dy = (np.arange(y0, max(y0, y1), dtype=np.float32) - np.float32(cy))[:, None]
    dx = (np.arange(x0, max(x0, x1), dtype=np.float32) - np.float32(cx))[None, :]
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1)), dy, dx


def _mark(canvas: Canvas, ys: slice, xs: slice, region: np.ndarray, kind: str) -> None:
    canvas.labels[ys, xs][region] = artifact_type_id(kind)


def _add(canvas: Canvas, ys: slice, xs: slice, delta: np.ndarray, kind: str) -> None:
    """Add ``delta`` and mark where it changes the image visibly."""
    canvas.image[ys, xs] += delta
    _mark(canvas, ys, xs, np.abs(delta) >= VISIBLE_DELTA, kind)


def _paint_circular(canvas: Canvas, subtle: bool) -> None:
    """Charging: a bright disc or ring with a soft edge."""
    rng = canvas.rng
    h, w = canvas.image.shape
    r = rng.uniform(30, 120)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    strength = rng.uniform(30, 45) if subtle else rng.uniform(50, 100)
    ring = rng.random() < 0.5
    thickness = rng.uniform(5, 14)
    ys, xs, dy, dx = window_around(h, w, cy, cx, r + 3 * thickness + 12)
    dist = np.sqrt(dy**2 + dx**2)
    if ring:
        profile = np.exp(-(((dist - r) / thickness) ** 2))
    else:
        edge = rng.uniform(3, 10)
        profile = 1.0 / (1.0 + np.exp(np.clip((dist - r) / edge, -30, 30)))
    _add(canvas, ys, xs, (strength * profile).astype(np.float32), "circular")


def _paint_horseshoe(canvas: Canvas, subtle: bool) -> None:
    """An arc of a ring, open on one side, fading towards its ends."""
    rng = canvas.rng
    h, w = canvas.image.shape
    r = rng.uniform(40, 110)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    thickness = rng.uniform(4, 10)
    opening = rng.uniform(0, 2 * np.pi)
    span = rng.uniform(np.pi * 0.9, np.pi * 1.6)
    sign = 1 if rng.random() < 0.8 else -1
    strength = rng.uniform(32, 48) if subtle else rng.uniform(55, 110)
    ys, xs, dy, dx = window_around(h, w, cy, cx, r + 3 * thickness)
    dist = np.sqrt(dy**2 + dx**2)
    along = np.mod(np.arctan2(dy, dx) - opening, 2 * np.pi) / span  # 0..1 on the arc
    taper = np.clip(np.sin(np.pi * np.clip(along, 0, 1)) * 5, 0, 1) * (along <= 1)
    profile = np.exp(-(((dist - r) / thickness) ** 2)) * taper
    _add(canvas, ys, xs, (sign * strength * profile).astype(np.float32), "horseshoe")


def _paint_scratch(canvas: Canvas, subtle: bool) -> None:
    """A long thin straight line across several patches."""
    rng = canvas.rng
    h, w = canvas.image.shape
    length = rng.uniform(400, 1400)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    theta = rng.uniform(0, np.pi)
    width = rng.uniform(2.0, 4.5)
    strength = rng.uniform(35, 50) if subtle else rng.uniform(60, 120)
    sign = 1 if rng.random() < 0.7 else -1
    vy, vx = np.sin(theta), np.cos(theta)
    y_lo, y_hi = sorted((cy - vy * length / 2, cy + vy * length / 2))
    x_lo, x_hi = sorted((cx - vx * length / 2, cx + vx * length / 2))
    pad = 3 * width
    ys = slice(max(0, int(y_lo - pad)), min(h, int(y_hi + pad) + 1))
    xs = slice(max(0, int(x_lo - pad)), min(w, int(x_hi + pad) + 1))
    if ys.stop <= ys.start or xs.stop <= xs.start:
        return
    dy = (np.arange(ys.start, ys.stop, dtype=np.float32) - np.float32(cy))[:, None]
    dx = (np.arange(xs.start, xs.stop, dtype=np.float32) - np.float32(cx))[None, :]
    along = dy * vy + dx * vx
    across = np.abs(dy * vx - dx * vy)
    # a knife mark: its depth wanders a little along the line
    wobble = 1 + 0.25 * np.sin(along / rng.uniform(40, 120) + rng.uniform(0, 2 * np.pi))
    profile = np.exp(-((across / width) ** 2)) * (np.abs(along) < length / 2) * wobble
    _add(canvas, ys, xs, (sign * strength * profile).astype(np.float32), "scratch")


def _paint_debris(canvas: Canvas, subtle: bool) -> None:
    """A dirt particle: an irregular, textured, mostly opaque blob."""
    rng = canvas.rng
    h, w = canvas.image.shape
    r = rng.uniform(22, 70)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ys, xs, dy, dx = window_around(h, w, cy, cx, 1.6 * r + 4)
    if dy.size == 0 or dx.size == 0:
        return
    angle = np.arctan2(dy, dx)
    wobble = np.ones_like(angle)
    for harmonic in (2, 3, 5):
        wobble += rng.uniform(0, 0.3 / harmonic * 2) * np.sin(
            harmonic * angle + rng.uniform(0, 2 * np.pi)
        )
    dist = np.sqrt(dy**2 + dx**2) / wobble
    alpha = np.clip((r - dist) / 2.0 + 0.5, 0, 1)
    if subtle:  # a thin, translucent film: the tissue shows through
        level, opacity = rng.uniform(15, 45), rng.uniform(0.45, 0.65)
    else:
        level, opacity = rng.uniform(5, 45), rng.uniform(0.85, 1.0)
    grain = ndimage.gaussian_filter(rng.standard_normal(alpha.shape).astype(np.float32), 2.0)
    fill = level + 40.0 * grain
    if not subtle and rng.random() < 0.4:  # charging at the particle's edge
        fill = fill + 70.0 * np.exp(-(((dist - r) / 3.0) ** 2))
    window = canvas.image[ys, xs]
    a = (opacity * alpha).astype(np.float32)
    window += a * (fill.astype(np.float32) - window)
    _mark(canvas, ys, xs, alpha >= 0.5, "debris")


def _paint_contrast(canvas: Canvas, subtle: bool) -> None:
    """A badly exposed beam field: its brightness and contrast are off."""
    rng = canvas.rng
    h, w = canvas.image.shape
    region = canvas.tile_ids == canvas.tile_ids[int(rng.integers(h)), int(rng.integers(w))]
    ys_idx, xs_idx = np.nonzero(region)
    ys = slice(int(ys_idx.min()), int(ys_idx.max()) + 1)
    xs = slice(int(xs_idx.min()), int(xs_idx.max()) + 1)
    region = region[ys, xs]
    # under-exposed fields come out dark and flat, over-exposed ones bright and clipped
    if subtle:
        gain = rng.uniform(0.6, 0.72) if rng.random() < 0.5 else rng.uniform(1.3, 1.45)
    else:
        gain = rng.uniform(0.3, 0.5) if rng.random() < 0.5 else rng.uniform(1.55, 1.9)
    window = canvas.image[ys, xs]
    window[region] *= np.float32(gain)
    _mark(canvas, ys, xs, region, "contrast")


def _paint_defocus(canvas: Canvas, subtle: bool) -> None:
    """A blurred region, either a rectangle or one whole beam field out of focus. The detector
    noise stays, weaker than around it."""
    rng = canvas.rng
    h, w = canvas.image.shape
    if rng.random() < 0.5:
        th, tw = int(rng.uniform(150, 380)), int(rng.uniform(150, 380))
        y0, x0 = int(rng.uniform(0, h - min(th, h))), int(rng.uniform(0, w - min(tw, w)))
        ys, xs = slice(y0, min(h, y0 + th)), slice(x0, min(w, x0 + tw))
        region = np.ones((ys.stop - ys.start, xs.stop - xs.start), dtype=bool)
    else:
        tid = canvas.tile_ids[int(rng.integers(h)), int(rng.integers(w))]
        full = canvas.tile_ids == tid
        ys_idx, xs_idx = np.nonzero(full)
        ys = slice(int(ys_idx.min()), int(ys_idx.max()) + 1)
        xs = slice(int(xs_idx.min()), int(xs_idx.max()) + 1)
        region = full[ys, xs]
    sigma = rng.uniform(3.0, 4.5) if subtle else rng.uniform(5.0, 9.0)
    window = canvas.image[ys, xs]
    blurred = ndimage.gaussian_filter(window, sigma, mode="nearest")
    blurred += np.float32(NOISE_SIGMA * 0.4) * rng.standard_normal(blurred.shape, dtype=np.float32)
    window[region] = blurred[region]
    _mark(canvas, ys, xs, region, "defocus")


def _paint_missing(canvas: Canvas, subtle: bool) -> None:
    """A missing or blank beam tile: a constant rectangle."""
    rng = canvas.rng
    h, w = canvas.image.shape
    th, tw = int(rng.uniform(100, 320)), int(rng.uniform(100, 320))
    y0, x0 = int(rng.uniform(0, h - min(th, h))), int(rng.uniform(0, w - min(tw, w)))
    if subtle:
        value = rng.uniform(110, 175)
    else:
        value = float(rng.choice([0.0, 255.0, rng.uniform(20, 230)]))
    ys, xs = slice(y0, min(h, y0 + th)), slice(x0, min(w, x0 + tw))
    canvas.image[ys, xs] = value
    canvas.labels[ys, xs] = artifact_type_id("missing")


PAINTERS: dict[str, Callable[[Canvas, bool], None]] = {
    "circular": _paint_circular,
    "horseshoe": _paint_horseshoe,
    "scratch": _paint_scratch,
    "debris": _paint_debris,
    "contrast": _paint_contrast,
    "defocus": _paint_defocus,
    "missing": _paint_missing,
}


# -- beam fields -----------------------------------------------------------------------------
BEAM_RADIUS = 190  # px from centre to corner of a hexagonal beam field (~12 um at 32 nm)


class BeamFields:
    """Gain per pixel from hexagonally packed beam fields: each field a little brighter or
    darker than its neighbours and a little darker towards its rim. Every section is imaged
    at its own stage position, so the pattern shifts from section to section."""

    def __init__(self, rng: np.random.Generator, *, width: int) -> None:
        self.rng = rng
        self.width = width
        self.margin = int(2 * BEAM_RADIUS * 1.8)
        n = width + self.margin
        vignette = rng.uniform(0.02, 0.05)
        self.ids = np.empty((n, n), dtype=np.int32)
        self.falloff = np.empty((n, n), dtype=np.float32)
        for y0 in range(0, n, 256):  # in bands: bounded memory for large sections
            q, r, rim = _hex_cells(np.arange(y0, min(n, y0 + 256)), np.arange(n))
            # rows of hexagons are offset by half a cell: fold (q, r) into one id
            self.ids[y0 : y0 + q.shape[0]] = (r + 64) * 4096 + (q + 2048)
            self.falloff[y0 : y0 + q.shape[0]] = 1 - vignette * rim
        _, inverse = np.unique(self.ids, return_inverse=True)
        self.ids = inverse.reshape(n, n).astype(np.int32)
        self.n_ids = int(self.ids.max()) + 1

    def section(self, z: int) -> tuple[np.ndarray, np.ndarray]:
        """``(tile_ids, gain)`` of section ``z``, both ``(y, x)``."""
        sy, sx = self.rng.integers(0, self.margin, size=2)
        ids = self.ids[sy : sy + self.width, sx : sx + self.width]
        drift = 1 + 0.03 * np.sin(z * 0.05)
        gains = (drift * self.rng.normal(1.0, 0.025, self.n_ids)).astype(np.float32)
        gain = gains[ids] * self.falloff[sy : sy + self.width, sx : sx + self.width]
        return ids, gain


def _hex_cells(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axial coordinates ``(q, r)`` of the pointy-top hexagon of radius :data:`BEAM_RADIUS`
    holding each pixel, and the pixel's squared distance from its centre in radii."""
    yy = rows.astype(np.float64)[:, None]
    xx = cols.astype(np.float64)[None, :]
    q = (np.sqrt(3) / 3 * xx - yy / 3) / BEAM_RADIUS
    r = np.broadcast_to(2 / 3 * yy / BEAM_RADIUS, q.shape)
    s = -q - r
    rq, rr, rs = np.rint(q), np.rint(r), np.rint(s)
    dq, dr, ds = np.abs(rq - q), np.abs(rr - r), np.abs(rs - s)
    fix_q = (dq > dr) & (dq > ds)
    fix_r = ~fix_q & (dr > ds)
    rq = np.where(fix_q, -rr - rs, rq)
    rr = np.where(fix_r, -rq - rs, rr)
    cx = BEAM_RADIUS * np.sqrt(3) * (rq + rr / 2)
    cy = BEAM_RADIUS * 1.5 * rr
    rim = ((xx - cx) ** 2 + (yy - cy) ** 2) / BEAM_RADIUS**2
    return rq.astype(np.int32), rr.astype(np.int32), rim.astype(np.float32)
