from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.pixels.grid import Grid


@st.composite
def grids(draw: st.DrawFn) -> Grid:
    mag = (draw(st.sampled_from([1, 2, 4, 8])),) * 2 + (draw(st.sampled_from([1, 2])),)
    patch = draw(st.integers(1, 64))
    stride = draw(st.integers(1, 80))
    width = draw(st.integers(patch, patch + 300)) * mag[0]
    height = draw(st.integers(patch, patch + 300)) * mag[1]
    depth = draw(st.integers(1, 20)) * mag[2]
    offset = (
        draw(st.integers(-500, 5000)),
        draw(st.integers(-500, 5000)),
        draw(st.integers(0, 100)),
    )
    return Grid(offset=offset, size=(width, height, depth), mag=mag, patch=patch, stride=stride)


@settings(max_examples=200, deadline=None)
@given(grid=grids(), data=st.data())
def test_index_coordinate_round_trip(grid: Grid, data: st.DataObject) -> None:
    indices = np.array(data.draw(st.lists(st.integers(0, len(grid) - 1), min_size=1, max_size=50)))
    origins = grid.origins(indices)
    np.testing.assert_array_equal(grid.indices(origins), indices)
    # every patch lies inside the bounding box
    ext = np.array(grid.patch_extent)
    assert (origins >= np.array(grid.offset)).all()
    assert (origins + ext <= np.array(grid.offset) + np.array(grid.size)).all()


@settings(max_examples=100, deadline=None)
@given(grid=grids(), data=st.data())
def test_overlapping_matches_brute_force(grid: Grid, data: st.DataObject) -> None:
    if len(grid) > 20_000:
        return
    off = tuple(
        data.draw(st.integers(grid.offset[i] - 50, grid.offset[i] + grid.size[i])) for i in range(3)
    )
    size = tuple(data.draw(st.integers(1, 400)) for _ in range(3))
    found = grid.overlapping(off, size)  # type: ignore[arg-type]
    all_idx = np.arange(len(grid))
    org = grid.origins(all_idx)
    ext = np.array(grid.patch_extent)
    lo, hi = np.array(off), np.array(off) + np.array(size)
    overlap = ((org < hi) & (org + ext > lo)).all(axis=1)
    np.testing.assert_array_equal(np.sort(found), all_idx[overlap])
    inside = ((org >= lo) & (org + ext <= hi)).all(axis=1)
    np.testing.assert_array_equal(np.sort(grid.contained(off, size)), all_idx[inside])  # type: ignore[arg-type]


def test_shape_and_order() -> None:
    grid = Grid(offset=(10, 20, 5), size=(300, 200, 3), patch=100, stride=100)
    assert grid.shape == (3, 2, 3)
    assert len(grid) == 18
    np.testing.assert_array_equal(
        grid.origins([0, 1, 3, 6]), [[10, 20, 5], [110, 20, 5], [10, 120, 5], [10, 20, 6]]
    )
    mag_grid = Grid(offset=(0, 0, 0), size=(1120 * 2, 1120, 4), mag=(8, 8, 1), patch=140, stride=35)
    assert mag_grid.patch_extent == (1120, 1120, 1)
    assert mag_grid.shape == (4, 1, 5)


def test_rejects_bad_grids() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        Grid(offset=(0, 0, 0), size=(100, 100, 1), patch=140)
    with pytest.raises(ValueError):
        Grid(offset=(0, 0, 0), size=(100, 100, 1), patch=10, stride=0)
    with pytest.raises(IndexError):
        Grid(offset=(0, 0, 0), size=(100, 100, 1), patch=10).origins([100])
    with pytest.raises(ValueError, match="not the origin"):
        Grid(offset=(0, 0, 0), size=(100, 100, 1), patch=10).indices(np.array([[5, 0, 0]]))
