"""How a dataset is cut into patches.

All coordinates are mag-1 voxel coordinates (as everywhere in webKnossos); patch size and
stride are pixels at the grid's mag. Patches are numbered z-major, then y, then x. The pool
is implicit: a grid index is all there is, no row per patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Vec3 = tuple[int, int, int]


@dataclass(frozen=True)
class Grid:
    offset: Vec3
    size: Vec3
    mag: Vec3 = (1, 1, 1)
    patch: int = 140
    stride: int = 140

    def __post_init__(self) -> None:
        if self.patch <= 0 or self.stride <= 0:
            raise ValueError("patch size and stride must be positive")
        if any(m <= 0 for m in self.mag):
            raise ValueError(f"invalid mag {self.mag}")
        if any(s <= 0 for s in self.size):
            raise ValueError(f"bounding box size must be positive, got {self.size}")
        width, height = self.size[0] // self.mag[0], self.size[1] // self.mag[1]
        if self.patch > width or self.patch > height:
            raise ValueError(
                f"patch of {self.patch} px does not fit into the bounding box "
                f"({width} x {height} px at mag {'-'.join(map(str, self.mag))})"
            )

    @property
    def shape(self) -> Vec3:
        """Number of patches along (z, y, x)."""
        nx = (self.size[0] // self.mag[0] - self.patch) // self.stride + 1
        ny = (self.size[1] // self.mag[1] - self.patch) // self.stride + 1
        nz = self.size[2] // self.mag[2]
        return (nz, ny, nx)

    def __len__(self) -> int:
        nz, ny, nx = self.shape
        return nz * ny * nx

    @property
    def patch_extent(self) -> Vec3:
        """Size of one patch in mag-1 voxels (x, y, z)."""
        return (self.patch * self.mag[0], self.patch * self.mag[1], self.mag[2])

    def origins(self, indices: np.ndarray | list[int] | int) -> np.ndarray:
        """Top-left mag-1 (x, y, z) of the given patch indices, shape ``(n, 3)``."""
        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"patch index out of range [0, {len(self)})")
        _nz, ny, nx = self.shape
        z, rest = np.divmod(idx, ny * nx)
        y, x = np.divmod(rest, nx)
        step_x, step_y = self.stride * self.mag[0], self.stride * self.mag[1]
        out = np.empty((idx.size, 3), dtype=np.int64)
        out[:, 0] = self.offset[0] + x * step_x
        out[:, 1] = self.offset[1] + y * step_y
        out[:, 2] = self.offset[2] + z * self.mag[2]
        return out

    def indices(self, origins: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`origins`; raises ``ValueError`` for positions not on the grid."""
        pos = np.atleast_2d(np.asarray(origins, dtype=np.int64))
        step = np.array([self.stride * self.mag[0], self.stride * self.mag[1], self.mag[2]])
        rel = pos - np.asarray(self.offset)
        cell, remainder = np.divmod(rel, step)
        nz, ny, nx = self.shape
        inside = (
            (remainder == 0).all(axis=1)
            & (cell >= 0).all(axis=1)
            & (cell[:, 0] < nx)
            & (cell[:, 1] < ny)
            & (cell[:, 2] < nz)
        )
        if not inside.all():
            bad = pos[~inside][0].tolist()
            raise ValueError(f"position {bad} is not the origin of a grid patch")
        return (cell[:, 2] * ny + cell[:, 1]) * nx + cell[:, 0]

    def overlapping(self, offset: Vec3, size: Vec3) -> np.ndarray:
        """Indices of grid patches that overlap the mag-1 box ``offset, size`` (sorted)."""
        nz, ny, nx = self.shape
        ex, ey, ez = self.patch_extent
        step = (self.stride * self.mag[0], self.stride * self.mag[1], self.mag[2])
        extents = (ex, ey, ez)
        counts = (nx, ny, nz)
        ranges = []
        for axis in range(3):
            lo_box = offset[axis] - self.offset[axis]
            hi_box = lo_box + size[axis]  # exclusive
            # patch i covers [i*step, i*step + extent): overlaps when i*step < hi and i*step + extent > lo
            first = max(0, -(-(lo_box - extents[axis] + 1) // step[axis]))
            last = min(counts[axis] - 1, (hi_box - 1) // step[axis])
            if size[axis] <= 0 or first > last:
                return np.empty(0, dtype=np.int64)
            ranges.append(np.arange(first, last + 1, dtype=np.int64))
        xs, ys, zs = ranges
        zz, yy, xx = np.meshgrid(zs, ys, xs, indexing="ij")
        return ((zz * ny + yy) * nx + xx).ravel()

    def contained(self, offset: Vec3, size: Vec3) -> np.ndarray:
        """Indices of grid patches lying entirely inside the mag-1 box ``offset, size``."""
        candidates = self.overlapping(offset, size)
        if candidates.size == 0:
            return candidates
        org = self.origins(candidates)
        ext = np.asarray(self.patch_extent)
        lo = np.asarray(offset)
        hi = lo + np.asarray(size)
        inside = ((org >= lo) & (org + ext <= hi)).all(axis=1)
        return candidates[inside]

    def z_of(self, indices: np.ndarray) -> np.ndarray:
        """Mag-1 z of each patch index (cheaper than :meth:`origins` for z-slice splits)."""
        _nz, ny, nx = self.shape
        return self.offset[2] + (np.asarray(indices, dtype=np.int64) // (ny * nx)) * self.mag[2]
