"""Section-scale defects of a montage, painted onto sections, for the QC of a prediction: a missing
field (one field of the montage's grid came back blank) and a charging region (a bright, soft
region over a share of the section). Each painter returns the mask of what it covered, so the
QC's re-image list can be scored field by field."""

from __future__ import annotations

import numpy as np


def field_box(
    shape: tuple[int, int], *, grid: tuple[int, int], field: tuple[int, int]
) -> tuple[slice, slice]:
    """The ``(y, x)`` slices of field ``(column, row)`` of a ``grid`` (columns, rows) over a
    section of ``shape`` (height, width), cut as :class:`server.predictions.qc.Fields` cuts."""
    h, w = shape
    cols, rows = grid
    fx, fy = field
    xs = slice(round(fx * w / cols), round((fx + 1) * w / cols))
    ys = slice(round(fy * h / rows), round((fy + 1) * h / rows))
    return ys, xs


def paint_missing_field(
    section: np.ndarray, *, grid: tuple[int, int], field: tuple[int, int], value: float = 0.0
) -> np.ndarray:
    """Blank one field of the montage in place (a beam tile that never arrived); its mask."""
    ys, xs = field_box(section.shape, grid=grid, field=field)  # type: ignore[arg-type]
    section[ys, xs] = value
    mask = np.zeros(section.shape, dtype=bool)
    mask[ys, xs] = True
    return mask


def paint_charging(
    section: np.ndarray,
    *,
    rng: np.random.Generator,
    share: float,
    strength: float = 90.0,
) -> np.ndarray:
    """A charging region in place: a soft-edged bright disc covering about ``share`` of the
    section, centred at random but kept inside it; its mask (where it adds at least half its
    strength)."""
    h, w = section.shape
    r = float(np.sqrt(share * h * w / np.pi))
    cy = rng.uniform(min(r, h / 2), max(h - r, h / 2))
    cx = rng.uniform(min(r, w / 2), max(w - r, w / 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    profile = 1.0 / (1.0 + np.exp(np.clip((dist - r) / 8.0, -30, 30)))
    painted = section.astype(np.float32) + strength * profile
    section[...] = np.clip(painted, 0, 255).astype(section.dtype)
    return profile >= 0.5
