"""Patch reads equal the numpy ground truth, on Zarr3 and WKW, also at borders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server.errors import DatasetError
from server.pixels.grid import Grid
from server.pixels.source import PatchSource, render_patch_png
from tests.conftest import write_test_dataset


def _expected(
    data: np.ndarray, origin: np.ndarray, size: int, offset=(0, 0, 0), mag: int = 1
) -> np.ndarray:
    """Reference cut-out from the mag-1 array (x, y, z), zero outside, as (rows=y, cols=x)."""
    out = np.zeros((size, size), dtype=data.dtype)
    down = data[::mag, ::mag, :]
    x, y, z = (
        int(origin[0] - offset[0]) // mag,
        int(origin[1] - offset[1]) // mag,
        int(origin[2] - offset[2]),
    )
    if not 0 <= z < down.shape[2]:
        return out
    xs, ys = max(x, 0), max(y, 0)
    xe, ye = min(x + size, down.shape[0]), min(y + size, down.shape[1])
    if xe > xs and ye > ys:
        out[ys - y : ye - y, xs - x : xe - x] = down[xs:xe, ys:ye, z].T
    return out


@pytest.mark.parametrize("data_format", ["zarr3", "wkw"])
def test_reads_equal_numpy(tmp_path: Path, data_format: str) -> None:
    offset = (64, 32, 2)
    data = write_test_dataset(
        tmp_path / "ds", shape=(600, 500, 6), data_format=data_format, offset=offset
    )
    source = PatchSource.open(tmp_path / "ds")
    assert source.info.data_format == data_format
    assert source.info.bbox_offset == offset
    grid = Grid(offset=offset, size=(600, 500, 6), patch=70, stride=70)
    rng = np.random.default_rng(1)
    # random order over the whole grid (chunk-ordered internally), plus dense runs
    for indices in (rng.permutation(len(grid))[:80], np.arange(len(grid))):
        origins = grid.origins(indices)
        patches = source.read_patches(origins, size_px=70)
        assert patches.shape == (len(indices), 70, 70)
        for origin, patch in zip(origins, patches, strict=True):
            np.testing.assert_array_equal(patch, _expected(data, origin, 70, offset))
    # off-grid positions and positions hanging over every border of the data
    odd = np.array(
        [
            [offset[0] - 30, offset[1] - 20, 2],
            [offset[0] + 570, offset[1] + 480, 7],
            [offset[0] + 13, offset[1] + 7, 3],
            [offset[0] + 590, offset[1] - 69, 4],
            [offset[0] - 500, offset[1], 5],
        ]
    )
    patches = source.read_patches(odd, size_px=70)
    for origin, patch in zip(odd, patches, strict=True):
        np.testing.assert_array_equal(patch, _expected(data, origin, 70, offset))


def test_read_at_coarser_mag(tmp_path: Path) -> None:
    data = write_test_dataset(tmp_path / "ds", shape=(512, 512, 3), mags=(1, 2))
    source = PatchSource.open(tmp_path / "ds", mag="2-2-1")
    grid = Grid(offset=(0, 0, 0), size=(512, 512, 3), mag=(2, 2, 1), patch=64, stride=64)
    origins = grid.origins(np.arange(len(grid)))
    patches = source.read_patches(origins, size_px=64)
    for origin, patch in zip(origins, patches, strict=True):
        np.testing.assert_array_equal(patch, _expected(data, origin, 64, mag=2))


def test_read_normalised(tmp_path: Path) -> None:
    data = write_test_dataset(tmp_path / "ds", shape=(300, 300, 2))
    source = PatchSource.open(tmp_path / "ds")
    out = source.read_normalised(np.array([[0, 0, 1]]), mean=148.0, std=36.0, size_px=140)
    assert out.dtype == np.float32 and out.shape == (1, 1, 140, 140)
    np.testing.assert_allclose(
        out[0, 0], (data[:140, :140, 1].T.astype(np.float32) - 148) / 36, rtol=1e-6
    )


def test_render_png_has_context_and_outline(tmp_path: Path) -> None:
    write_test_dataset(tmp_path / "ds", shape=(400, 400, 2))
    source = PatchSource.open(tmp_path / "ds")
    png = render_patch_png(source, (140, 140, 0), size_px=100, margin_px=30, scale=2)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (320, 320)
    pixels = np.asarray(image.convert("RGB"))
    # the outline is drawn in yellow-orange at the margin
    assert tuple(pixels[59, 160]) == (255, 200, 0)
    assert tuple(pixels[160, 160]) != (255, 200, 0)


def test_open_errors(tmp_path: Path) -> None:
    write_test_dataset(tmp_path / "ds", shape=(200, 200, 1))
    with pytest.raises(DatasetError, match="not a webKnossos dataset"):
        PatchSource.open(tmp_path)
    with pytest.raises(DatasetError, match="no layer 'segmentation'"):
        PatchSource.open(tmp_path / "ds", layer="segmentation")
    with pytest.raises(DatasetError, match="no mag 4-4-4"):
        PatchSource.open(tmp_path / "ds", mag=4)
