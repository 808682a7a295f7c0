"""A second artifact painter, written from descriptions of real multi-beam SEM artifacts and
sharing nothing with :mod:`server.sim.artifacts` or the training augmentations.

Each painter draws one artifact about one 140 px patch in size around a given centre of a
float32 ``(y, x)`` section and returns the pixels an annotator would outline (its footprint),
whatever its strength: a faint artifact is drawn at the weak end of its contrast, near what a
person still sees, over the same footprint. What each kind imitates:

- ``charging``: a bright halo where charge builds up, with a streak trailing along the scan
  line (the fast scan direction, x) as the detector recovers;
- ``scratch``: a thin straight line cut by the knife, darker or brighter, with a soft halo of
  disturbed surface on either side;
- ``fold``: a dark band where the section folded over itself, the tissue inside seen twice
  (the section and a shifted copy of it, superimposed);
- ``debris``: a dark irregular particle on the section with a bright charging rim;
- ``missing-field``: one beam's hexagonal field with no signal (a flat grey level and shot noise);
- ``stitch-seam``: the border between two neighbouring fields that do not line up: the tissue
  on one side shifted by a few pixels, a thin brightness step along the border;
- ``beam-gain``: one beam's hexagonal field brighter or darker and with more or less contrast
  than its neighbours (each beam has its own detector gain);
- ``defocus``: one beam's field out of focus, often astigmatic: blurred more along one
  direction than the other.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

MSEM_KINDS = (
    "charging", "scratch", "fold", "debris", "missing-field", "stitch-seam", "beam-gain",
    "defocus",
)  # fmt: skip
# the artifact type an annotator would pick for each kind (models.vocab.ARTIFACT_TYPES);
# stitching seams and per-beam gain are both errors of a beam field's grey levels
TYPE_OF = {
    "charging": "circular",
    "scratch": "scratch",
    "fold": "fold",
    "debris": "debris",
    "missing-field": "missing",
    "stitch-seam": "contrast",
    "beam-gain": "contrast",
    "defocus": "defocus",
}
FAINT_SHARE = 1 / 3  # share of artifacts drawn at the weak end of their contrast

Painter = Callable[[np.ndarray, np.random.Generator, float, float, bool], np.ndarray]


def _grid(shape: tuple[int, int], cy: float, cx: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets of every pixel from ``(cy, cx)``: a column of dy and a row of dx."""
    dy = np.arange(shape[0], dtype=np.float32)[:, None] - np.float32(cy)
    dx = np.arange(shape[1], dtype=np.float32)[None, :] - np.float32(cx)
    return dy, dx


def _hexagon(shape: tuple[int, int], cy: float, cx: float, radius: float) -> np.ndarray:
    """A beam's field: a regular hexagon of circumradius ``radius``, flat sides up and down."""
    dy, dx = _grid(shape, cy, cx)
    ay, ax = np.abs(dy), np.abs(dx)
    inner = radius * np.sqrt(3) / 2
    return (ay <= inner) & (ay * 0.5 + ax * np.sqrt(3) / 2 <= inner)


def _texture_contrast(image: np.ndarray, where: np.ndarray) -> float:
    """Spread of the grey levels under ``where`` (at least a few levels)."""
    values = image[where]
    return max(float(values.std()) if values.size else 0.0, 8.0)


def paint_charging(
    image: np.ndarray, rng: np.random.Generator, cy: float, cx: float, faint: bool
) -> np.ndarray:
    dy, dx = _grid(image.shape, cy, cx)
    radius = rng.uniform(12, 30)
    halo = np.exp(-np.sqrt(dy**2 + dx**2) / radius)
    length = rng.uniform(50, 110)
    width = rng.uniform(3, 9)
    streak = np.where(dx > 0, np.exp(-dx / length), 0.0) * np.exp(-((dy / width) ** 2))
    # cut off where it fades into the noise, so that nothing changes outside what is marked
    profile = np.clip((np.maximum(halo, 0.8 * streak) - 0.08) / 0.92, 0.0, 1.0)
    amplitude = rng.uniform(14, 22) if faint else rng.uniform(40, 80)
    image += (amplitude * profile).astype(np.float32)
    return profile >= 0.12


def paint_scratch(
    image: np.ndarray, rng: np.random.Generator, cy: float, cx: float, faint: bool
) -> np.ndarray:
    dy, dx = _grid(image.shape, cy, cx)
    angle = rng.uniform(0, np.pi)
    across = dy * np.cos(angle) - dx * np.sin(angle)  # distance from the line
    along = dy * np.sin(angle) + dx * np.cos(angle)
    half_length = rng.uniform(55, 90)
    ends = np.clip(1.0 - (np.abs(along) - half_length) / 8.0, 0.0, 1.0)
    core = np.exp(-((across / rng.uniform(0.8, 1.8)) ** 2)) * ends
    halo_width = rng.uniform(6, 12)
    halo = np.exp(-((across / halo_width) ** 2)) * ends
    sign = -1.0 if rng.random() < 0.6 else 1.0
    amplitude = rng.uniform(22, 35) if faint else rng.uniform(60, 110)
    delta = sign * amplitude * core + 0.25 * amplitude * halo
    image += delta.astype(np.float32)
    return (np.abs(across) <= halo_width) & (ends > 0.5)


def paint_fold(
    image: np.ndarray, rng: np.random.Generator, cy: float, cx: float, faint: bool
) -> np.ndarray:
    dy, dx = _grid(image.shape, cy, cx)
    angle = rng.uniform(0, np.pi)
    across = dy * np.cos(angle) - dx * np.sin(angle)
    along = dy * np.sin(angle) + dx * np.cos(angle)
    half_width = rng.uniform(6, 14)
    half_length = rng.uniform(60, 95)
    band = (np.abs(across) <= half_width) & (np.abs(along) <= half_length)
    shift = (int(rng.integers(6, 18)), int(rng.integers(6, 18)))
    doubled = 0.5 * (image + np.roll(image, shift, axis=(0, 1)))
    darker = rng.uniform(10, 18) if faint else rng.uniform(35, 70)
    soft = ndimage.gaussian_filter(band.astype(np.float32), 1.5)
    image[...] = (1 - soft) * image + soft * (doubled - darker)
    return band


def paint_debris(
    image: np.ndarray, rng: np.random.Generator, cy: float, cx: float, faint: bool
) -> np.ndarray:
    h, w = image.shape
    radius = rng.uniform(18, 40)
    dy, dx = _grid(image.shape, cy, cx)
    bumps = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), radius / 3)
    bumps /= max(float(bumps.std()), 1e-6)
    blob = np.sqrt(dy**2 + dx**2) / radius + 0.35 * bumps <= 1.0
    blob = ndimage.binary_opening(blob, iterations=2) if blob.sum() > 40 else blob
    labelled, n = ndimage.label(blob)
    if n > 1:  # keep the particle under the centre (or the largest piece)
        sizes = ndimage.sum(blob, labelled, range(1, n + 1))
        blob = labelled == int(np.argmax(sizes)) + 1
    rim = ndimage.binary_dilation(blob, iterations=3) & ~blob
    dark = rng.uniform(25, 40) if faint else rng.uniform(70, 120)
    bright = rng.uniform(8, 14) if faint else rng.uniform(25, 50)
    image[blob] = image[blob] * 0.3 + (float(image.mean()) - dark) * 0.7
    image[rim] += bright
    return blob | rim


def paint_missing_field(
    image: np.ndarray, rng: np.random.Generator, cy: float, cx: float, faint: bool
) -> np.ndarray:
    field = _hexagon(image.shape, cy, cx, rng.uniform(38, 62))
    level = float(image[field].mean()) if field.any() else float(image.mean())
    spread = _texture_contrast(image, field)
    if faint:  # a field with most of its signal lost: weak texture left, noise on top
        keep = rng.uniform(0.3, 0.45)
        noise = rng.normal(0, 0.25 * spread, int(field.sum()))
        image[field] = level + keep * (image[field] - level) + noise
    else:
        image[field] = level + rng.uniform(-30, 30) + rng.normal(0, 4, int(field.sum()))
    return field


def paint_stitch_seam(
    image: np.ndarray, rng: np.random.Generator, cy: float, cx: float, faint: bool
) -> np.ndarray:
    dy, dx = _grid(image.shape, cy, cx)
    vertical = rng.random() < 0.5
    across, along = (dx, dy) if vertical else (dy, dx)
    half_length = rng.uniform(60, 95)
    depth = rng.uniform(30, 60)  # how far the misplaced field reaches from the border
    side = (across > 0) & (across <= depth) & (np.abs(along) <= half_length)
    offset = int(rng.integers(2, 5)) if faint else int(rng.integers(6, 16))
    shifted = np.roll(image, offset, axis=0 if vertical else 1)
    step = rng.uniform(5, 10) if faint else rng.uniform(15, 35)
    image[side] = shifted[side] + step * (1 if rng.random() < 0.5 else -1)
    line = (np.abs(across) <= 1.5) & (np.abs(along) <= half_length)
    image[line] -= step
    return (across >= -3) & (across <= depth) & (np.abs(along) <= half_length)


def paint_beam_gain(
    image: np.ndarray, rng: np.random.Generator, cy: float, cx: float, faint: bool
) -> np.ndarray:
    field = _hexagon(image.shape, cy, cx, rng.uniform(40, 65))
    level = float(image[field].mean()) if field.any() else float(image.mean())
    gain = rng.uniform(0.12, 0.2) if faint else rng.uniform(0.35, 0.6)
    gain = 1 + gain if rng.random() < 0.5 else 1 - gain
    offset = rng.uniform(6, 12) if faint else rng.uniform(18, 40)
    offset *= 1 if rng.random() < 0.5 else -1
    image[field] = level + gain * (image[field] - level) + offset
    return field


def paint_defocus(
    image: np.ndarray, rng: np.random.Generator, cy: float, cx: float, faint: bool
) -> np.ndarray:
    field = _hexagon(image.shape, cy, cx, rng.uniform(40, 65))
    # astigmatism: a different blur along the two axes of a rotated frame
    sharp, soft = (
        (rng.uniform(0.8, 1.3), rng.uniform(1.5, 2.2))
        if faint
        else (rng.uniform(1.5, 3.0), rng.uniform(3.5, 6.0))
    )
    angle = float(rng.uniform(0, 180))
    turned = ndimage.rotate(image, angle, reshape=True, order=1, mode="reflect")
    blurred = ndimage.gaussian_filter(
        turned, (sharp, soft) if rng.random() < 0.5 else (soft, sharp)
    )
    back = ndimage.rotate(blurred, -angle, reshape=True, order=1, mode="reflect")
    top = (back.shape[0] - image.shape[0]) // 2
    left = (back.shape[1] - image.shape[1]) // 2
    back = back[top : top + image.shape[0], left : left + image.shape[1]]
    image[field] = back[field]
    return field


PAINTERS: dict[str, Painter] = {
    "charging": paint_charging,
    "scratch": paint_scratch,
    "fold": paint_fold,
    "debris": paint_debris,
    "missing-field": paint_missing_field,
    "stitch-seam": paint_stitch_seam,
    "beam-gain": paint_beam_gain,
    "defocus": paint_defocus,
}
