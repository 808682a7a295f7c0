"""Reading patches out of a webKnossos dataset, fast.

``MagView.read`` costs milliseconds per call, so single-patch reads are the slow path.
For Zarr layers we talk to the layer's tensorstore array directly with a shared cache pool
and keep many reads in flight; batches are sorted into chunk order, and patches that lie
close together in one block of chunk-deep sections (or, failing that, in one section) are
served from one region read and cut out in memory. Reading a chunk-deep block at once
touches each chunk once instead of once per section, which is what makes a batch in
storage order nearly as fast as reading the raw chunks. WKW layers get the same region
batching through ``MagView.read`` on a thread pool.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image, ImageDraw

from server.errors import DatasetError
from server.pixels.grid import Vec3
from server.pixels.tensorstore import TensorStoreRead, chunk_depth, open_tensorstore
from server.settings import Settings
from server.wklib import wk

if TYPE_CHECKING:
    from server.db.tables import Dataset

# A slice region is read in one go when its area is at most this many times the area of
# the patches it serves; sparser groups are read patch by patch, all in flight at once.
_REGION_WASTE_FACTOR = 2.0


class _Result(Protocol):
    def result(self) -> Any: ...


# (patch index in the batch, dx, dy, dz) of a patch inside the region it is cut from
_Target = tuple[int, int, int, int]
_Plan = list[tuple[_Result, list[_Target]]]


@dataclass(frozen=True)
class LayerInfo:
    path: str
    layer: str
    mag: Vec3
    bbox_offset: Vec3
    bbox_size: Vec3
    voxel_size: tuple[float, float, float]
    dtype: str
    data_format: str
    available_mags: tuple[str, ...]


def parse_mag(mag: str | int | Sequence[int]) -> Vec3:
    """``1``, ``"2"``, ``"8-8-1"`` or ``(8, 8, 1)`` -> ``(x, y, z)``."""
    if isinstance(mag, int):
        values = [mag] * 3
    elif isinstance(mag, str):
        parts = mag.replace("x", "-").split("-")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise DatasetError(f"invalid mag {mag!r}: use e.g. 1, 2 or 8-8-1") from None
        if len(values) == 1:
            values = values * 3
    else:
        values = [int(v) for v in mag]
    if len(values) != 3 or any(v <= 0 for v in values):
        raise DatasetError(f"invalid mag {mag!r}: use e.g. 1, 2 or 8-8-1")
    return (values[0], values[1], values[2])


def mag_name(mag: Vec3) -> str:
    return "-".join(str(v) for v in mag)


def patch_extent(dataset: Dataset) -> tuple[int, int]:
    """Width and height of one grid patch of ``dataset`` in mag-1 voxels."""
    mag = parse_mag(dataset.mag)
    return dataset.patch_size * mag[0], dataset.patch_size * mag[1]


class PatchSource:
    """One color layer at one mag of a webKnossos dataset, read as 2-D patches."""

    def __init__(self, *, mag_view: Any, info: LayerInfo, threads: int = 8) -> None:
        self.info = info
        self._mag_view = mag_view
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._ts_array: Any | None = None
        if info.data_format in ("zarr3", "zarr"):
            self._ts_array = open_tensorstore(mag_view)
        # sections per chunk: a block this deep is read in one go when a batch fills it
        self.chunk_depth = max(1, chunk_depth(mag_view, self._ts_array))

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def open(
        cls, path: str | Path, *, layer: str = "color", mag: str | int | Sequence[int] = 1
    ) -> PatchSource:
        mag_vec = parse_mag(mag)
        path_str = str(path)
        if is_webknossos_url(path_str):
            dataset = _open_remote(path_str)
        else:
            if (
                "://" not in path_str
                and not (Path(path_str) / "datasource-properties.json").is_file()
            ):
                raise DatasetError(
                    f"{path_str} is not a webKnossos dataset (no datasource-properties.json found)"
                )
            try:
                dataset = wk.Dataset.open(path_str)
            except Exception as exc:  # the library raises many kinds here
                raise DatasetError(f"cannot open webKnossos dataset at {path_str}: {exc}") from None
        if layer not in dataset.layers:
            raise DatasetError(
                f"dataset has no layer {layer!r} (layers: {', '.join(sorted(dataset.layers)) or 'none'})"
            )
        wk_layer = dataset.get_layer(layer)
        mags = {tuple(int(v) for v in m.to_list()): m for m in wk_layer.mags}
        available = tuple(mag_name((m[0], m[1], m[2])) for m in sorted(mags))
        if mag_vec not in mags:
            raise DatasetError(
                f"layer {layer!r} has no mag {mag_name(mag_vec)} (mags: {', '.join(available)})"
            )
        mag_view = wk_layer.get_mag(mags[mag_vec])
        bbox = wk_layer.bounding_box
        voxel = dataset.voxel_size
        info = LayerInfo(
            path=path_str,
            layer=layer,
            mag=mag_vec,
            bbox_offset=tuple(int(v) for v in bbox.topleft.to_tuple()),  # type: ignore[arg-type]
            bbox_size=tuple(int(v) for v in bbox.size.to_tuple()),  # type: ignore[arg-type]
            voxel_size=(float(voxel[0]), float(voxel[1]), float(voxel[2])),
            dtype=str(np.dtype(wk_layer.dtype_per_channel)),
            data_format=str(wk_layer.data_format.value),
            available_mags=available,
        )
        return cls(mag_view=mag_view, info=info)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __enter__(self) -> PatchSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------
    def read_region(self, offset: Vec3, size_px: tuple[int, int]) -> np.ndarray:
        """One 2-D region at mag-1 ``offset`` of ``size_px`` (width, height) pixels at this
        mag, as ``(height, width)`` (rows are y). Outside the data it is zero."""
        return self._submit(_to_mag(offset, self.info.mag), size_px).result()[0]

    def read_patches(
        self, origins: np.ndarray, *, size_px: int | tuple[int, int] = 140
    ) -> np.ndarray:
        """Patches at mag-1 top-left ``origins`` ``(n, 3)`` as ``(n, height, width)`` raw values.

        The batch is served in chunk order (grouped by chunk-deep block of sections, then by
        section; dense groups from one region read), with all reads in flight at once; the
        result keeps the order of ``origins``. Batches that walk the grid in storage order
        (block of sections, then rows, columns, sections) read fastest.
        """
        width, height = (size_px, size_px) if isinstance(size_px, int) else size_px
        pos = np.atleast_2d(np.asarray(origins, dtype=np.int64))
        n = pos.shape[0]
        out = np.zeros((n, height, width), dtype=np.dtype(self.info.dtype))
        if n == 0:
            return out
        mag = np.asarray(self.info.mag)
        cells = pos // mag  # positions at this mag
        order = np.lexsort((cells[:, 0], cells[:, 1], cells[:, 2]))
        pending: _Plan = []
        # split the sorted batch into runs of one block of chunk-deep sections
        blocks = cells[order, 2] // self.chunk_depth
        for run in np.split(order, np.flatnonzero(np.diff(blocks)) + 1):
            pending.extend(self._plan_block(cells, run, width=width, height=height))
        for future, targets in pending:
            region = future.result()
            for i, dx, dy, dz in targets:
                out[i] = region[dz, dy : dy + height, dx : dx + width]
        return out

    def read_normalised(
        self, origins: np.ndarray, *, mean: float, std: float, size_px: int | tuple[int, int] = 140
    ) -> np.ndarray:
        """Like :meth:`read_patches` but ``float32 (n, 1, h, w)`` normalised as ``(x - mean) / std``."""
        raw = self.read_patches(origins, size_px=size_px)
        out = raw.astype(np.float32)[:, None]
        out -= np.float32(mean)
        out *= np.float32(1.0 / std)
        return out

    def _plan_block(self, cells: np.ndarray, run: np.ndarray, *, width: int, height: int) -> _Plan:
        """Patches of one block of chunk-deep sections: one 3-D region read when they fill
        it densely enough, else one per row of patches that does, the rest section by
        section."""
        whole = self._plan_box(cells, run, width=width, height=height)
        if whole is not None:
            return [whole]
        plans: _Plan = []
        xs, ys, zs = cells[run, 0], cells[run, 1], cells[run, 2]
        if zs.max() > zs.min():
            by_row = run[np.lexsort((zs, xs, ys))]
            rows = np.split(by_row, np.flatnonzero(np.diff(cells[by_row, 1])) + 1)
            rest = []
            for row in rows:
                box = self._plan_box(cells, row, width=width, height=height)
                if box is None:
                    rest.append(row)
                else:
                    plans.append(box)
            if not rest:
                return plans
            run = np.concatenate(rest)
            run = run[np.lexsort((cells[run, 0], cells[run, 1], cells[run, 2]))]
            zs = cells[run, 2]
        for section in np.split(run, np.flatnonzero(np.diff(zs)) + 1):
            plans.extend(self._plan_slice(cells, section, width=width, height=height))
        return plans

    def _plan_box(
        self, cells: np.ndarray, run: np.ndarray, *, width: int, height: int
    ) -> tuple[_Result, list[_Target]] | None:
        """One 3-D region read for patches spanning several sections, if dense enough."""
        xs, ys, zs = cells[run, 0], cells[run, 1], cells[run, 2]
        x0, y0, z0 = int(xs.min()), int(ys.min()), int(zs.min())
        x1, y1, z1 = int(xs.max()) + width, int(ys.max()) + height, int(zs.max()) + 1
        volume = (x1 - x0) * (y1 - y0) * (z1 - z0)
        if z1 - z0 < 2 or volume > _REGION_WASTE_FACTOR * width * height * len(run):
            return None
        future = self._submit((x0, y0, z0), (x1 - x0, y1 - y0), depth=z1 - z0)
        targets = [
            (int(i), int(x - x0), int(y - y0), int(z - z0))
            for i, x, y, z in zip(run, xs, ys, zs, strict=True)
        ]
        return future, targets

    def _plan_slice(self, cells: np.ndarray, run: np.ndarray, *, width: int, height: int) -> _Plan:
        xs, ys, z = cells[run, 0], cells[run, 1], int(cells[run[0], 2])
        x0, y0 = int(xs.min()), int(ys.min())
        x1, y1 = int(xs.max()) + width, int(ys.max()) + height
        region_area = (x1 - x0) * (y1 - y0)
        patch_area = width * height * len(run)
        if len(run) > 1 and region_area <= _REGION_WASTE_FACTOR * patch_area:
            future = self._submit((x0, y0, z), (x1 - x0, y1 - y0))
            targets = [
                (int(i), int(x - x0), int(y - y0), 0) for i, x, y in zip(run, xs, ys, strict=True)
            ]
            return [(future, targets)]
        if len(run) > 1 and (y1 - y0) > height:
            # sparse: try bands of rows before falling back to single patches
            plans: _Plan = []
            row_starts = np.flatnonzero(np.diff(ys)) + 1
            for band in np.split(np.arange(len(run)), row_starts):
                plans.extend(self._plan_band(cells, run[band], z=z, width=width, height=height))
            return plans
        return self._plan_band(cells, run, z=z, width=width, height=height)

    def _plan_band(
        self, cells: np.ndarray, run: np.ndarray, *, z: int, width: int, height: int
    ) -> _Plan:
        xs, ys = cells[run, 0], cells[run, 1]
        x0, y0 = int(xs.min()), int(ys.min())
        x1, y1 = int(xs.max()) + width, int(ys.max()) + height
        if len(run) > 1 and (x1 - x0) * (y1 - y0) <= _REGION_WASTE_FACTOR * width * height * len(
            run
        ):
            future = self._submit((x0, y0, z), (x1 - x0, y1 - y0))
            return [
                (
                    future,
                    [
                        (int(i), int(x - x0), int(y - y0), 0)
                        for i, x, y in zip(run, xs, ys, strict=True)
                    ],
                )
            ]
        return [
            (self._submit((int(x), int(y), z), (width, height)), [(int(i), 0, 0, 0)])
            for i, x, y in zip(run, xs, ys, strict=True)
        ]

    def _submit(self, cell: Vec3, size_px: tuple[int, int], *, depth: int = 1) -> _Result:
        """Start reading a region of ``size_px`` (width, height) by ``depth`` sections whose
        corner is ``cell`` (coordinates at this mag); its result is ``(depth, height, width)``."""
        if self._ts_array is not None:
            return TensorStoreRead(self._ts_array, cell, size_px, depth)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self._threads, thread_name_prefix="patch-read"
            )
        return self._pool.submit(self._read_view, cell, size_px, depth)

    def _read_view(self, cell: Vec3, size_px: tuple[int, int], depth: int) -> np.ndarray:
        mag = self.info.mag
        width, height = size_px
        out = np.zeros((depth, height, width), dtype=np.dtype(self.info.dtype))
        # the library refuses negative offsets: read the non-negative part, pad the rest
        x0, y0, z0 = max(cell[0], 0), max(cell[1], 0), max(cell[2], 0)
        x1, y1, z1 = cell[0] + width, cell[1] + height, cell[2] + depth
        if x1 <= x0 or y1 <= y0 or z1 <= z0:
            return out
        data = self._mag_view.read(
            absolute_offset=(x0 * mag[0], y0 * mag[1], z0 * mag[2]),
            size=((x1 - x0) * mag[0], (y1 - y0) * mag[1], (z1 - z0) * mag[2]),
        )
        out[z0 - cell[2] :, y0 - cell[1] :, x0 - cell[0] :] = data[0].transpose(2, 1, 0)
        return out


def is_webknossos_url(path: str) -> bool:
    """``https://host/datasets/<name>-<id>/view``: a dataset on a webKnossos server."""
    return path.startswith(("http://", "https://")) and "/datasets/" in path


def _open_remote(url: str) -> Any:
    """A dataset on the configured webKnossos server, read through its Zarr streaming."""
    settings = Settings()  # read now: the server may be configured after start-up
    if not settings.wk_url or settings.wk_token is None:
        raise DatasetError(
            f"{url} is on a webKnossos server: set ARTIFACT_LOOP_WK_URL and "
            "ARTIFACT_LOOP_WK_TOKEN to read it"
        )
    server = settings.wk_url.rstrip("/")
    if not url.startswith(server + "/"):
        raise DatasetError(f"{url} is not on the configured webKnossos server {server}")
    try:
        with wk.webknossos_context(
            url=server, token=settings.wk_token.get_secret_value(), timeout=settings.wk_timeout_s
        ):
            return wk.RemoteDataset.open(url)
    except Exception as exc:  # unreachable, 401, unknown dataset: the library raises many kinds
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise DatasetError(f"cannot open webKnossos dataset {url}: {first}") from None


def _to_mag(offset: Vec3, mag: Vec3) -> Vec3:
    return (offset[0] // mag[0], offset[1] // mag[1], offset[2] // mag[2])


def render_patch_png(
    source: PatchSource,
    origin: Vec3,
    *,
    size_px: int = 140,
    margin_px: int = 70,
    contrast: tuple[float, float] | None = None,
    scale: int = 1,
) -> bytes:
    """A PNG of one patch with ``margin_px`` of context around it and the patch outlined."""
    mag = source.info.mag
    top_left = (origin[0] - margin_px * mag[0], origin[1] - margin_px * mag[1], origin[2])
    full = size_px + 2 * margin_px
    region = source.read_region(top_left, (full, full)).astype(np.float32)
    if contrast is None:
        lo, hi = np.percentile(region, (0.5, 99.5)) if region.any() else (0.0, 255.0)
    else:
        lo, hi = contrast
    scaled = np.clip((region - lo) / max(float(hi - lo), 1e-6) * 255.0, 0, 255).astype(np.uint8)
    image = Image.fromarray(scaled, mode="L").convert("RGB")
    if scale > 1:
        image = image.resize((full * scale, full * scale), Image.Resampling.NEAREST)
    if margin_px > 0:
        draw = ImageDraw.Draw(image)
        a = margin_px * scale - 1
        b = (margin_px + size_px) * scale
        draw.rectangle((a, a, b, b), outline=(255, 200, 0), width=max(1, scale))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
