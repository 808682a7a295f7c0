"""Direct tensorstore access to a Zarr mag: our own cache pool and read concurrency, and
reads of a padded box that may reach past the data."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorstore as ts

from server.pixels.grid import Vec3

_TS_CACHE_BYTES = 512 * 1024 * 1024


class TensorStoreRead:
    """A tensorstore read in flight, clipped to the array's domain and zero-padded; its
    result is ``(depth, height, width)``."""

    def __init__(self, array: Any, cell: Vec3, size_px: tuple[int, int], depth: int) -> None:
        self._shape = (depth, size_px[1], size_px[0])
        self._dtype = array.dtype.numpy_dtype
        x, y, z = cell
        want = ts.IndexDomain(
            4, inclusive_min=(0, x, y, z), shape=(1, size_px[0], size_px[1], depth)
        )
        have = want.intersect(array.domain)
        self._offset = tuple(have.inclusive_min[i] - cell[i - 1] for i in (3, 2, 1))
        # Fortran order: (x, y, z) with x fastest is (z, y, x) in C order, no transposing copy
        self._future = array[have].read(order="F") if have.size else None

    def result(self) -> np.ndarray:
        if self._future is None:
            return np.zeros(self._shape, dtype=self._dtype)
        data = self._future.result()[0].transpose(2, 1, 0)
        if data.shape == self._shape:
            return data
        out = np.zeros(self._shape, dtype=data.dtype)
        dz, dy, dx = self._offset
        out[dz : dz + data.shape[0], dy : dy + data.shape[1], dx : dx + data.shape[2]] = data
        return out


def open_tensorstore(mag_view: Any) -> Any:
    """Re-open the mag's Zarr array with our own cache pool and read concurrency."""
    base = mag_view.get_zarr_array()
    context = ts.Context(
        {
            "cache_pool": {"total_bytes_limit": _TS_CACHE_BYTES},
            "data_copy_concurrency": {"limit": 8},
            "file_io_concurrency": {"limit": 32},
        }
    )
    spec = base.spec(retain_context=False).to_json()
    spec.pop("context", None)
    spec["recheck_cached_data"] = False
    return ts.open(spec, context=context, read=True).result()


def chunk_depth(mag_view: Any, ts_array: Any | None) -> int:
    """Sections per storage chunk of the mag (1 when it cannot be told)."""
    try:
        if ts_array is not None:
            return int(ts_array.chunk_layout.read_chunk.shape[3])
        return int(mag_view.info.chunk_shape.z)
    except Exception:  # an unusual layout: fall back to section-by-section reads
        return 1
