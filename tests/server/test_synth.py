"""The synthetic mSEM dataset: deterministic, readable, with consistent ground truth."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from server.patches import PatchSource
from server.synth import PATCH, make_synthetic_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "a"
    make_synthetic_dataset(path, seed=5, shape=(840, 6), artifact_rate=3.0)
    return path


def _truth(path: Path) -> list[dict[str, str]]:
    with (path / "ground_truth.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_same_seed_same_data_other_seed_other_data(tiny: Path, tmp_path: Path) -> None:
    again = make_synthetic_dataset(tmp_path / "b", seed=5, shape=(840, 6), artifact_rate=3.0)
    other = make_synthetic_dataset(tmp_path / "c", seed=6, shape=(840, 6), artifact_rate=3.0)
    region = ((0, 0, 0), (840, 840))
    with (
        PatchSource.open(tiny, layer="color", mag=1) as a,
        PatchSource.open(again.path, layer="color", mag=1) as b,
        PatchSource.open(other.path, layer="color", mag=1) as c,
    ):
        first = a.read_region(*region)
        assert np.array_equal(first, b.read_region(*region))
        assert not np.array_equal(first, c.read_region(*region))
    assert _truth(tiny) == _truth(again.path)


def test_ground_truth_matches_the_mask_layer(tiny: Path) -> None:
    rows = _truth(tiny)
    assert len(rows) == 6 * 6 * 6 and list(rows[0]) == ["x", "y", "z", "w", "h", "label", "type"]
    with PatchSource.open(tiny, layer="artifact_mask", mag=1) as mask:
        for row in rows:
            x, y, z = int(row["x"]), int(row["y"]), int(row["z"])
            patch = mask.read_region((x, y, z), (PATCH, PATCH))
            covered = (patch > 0).mean()
            assert (row["label"] == "artifact") == (covered >= 0.02), row
    assert {r["type"] for r in rows if r["label"] == "artifact"} <= {
        "circular",
        "horseshoe",
        "scratch",
        "debris",
        "missing",
        "defocus",
    }


def test_default_prevalence_and_every_kind(tmp_path: Path) -> None:
    summary = make_synthetic_dataset(tmp_path / "p", seed=0, shape=(1960, 8))
    share = summary.n_artifact_patches / summary.n_patches
    assert 0.02 <= share <= 0.09, share
    from server.wk import wk

    ds = wk.Dataset.open(summary.path)
    assert ds.get_layer("color").dtype == np.uint8
    assert sorted(m.to_layer_name() for m in ds.get_layer("color").mags) == ["1", "2-2-1", "4-4-1"]
    assert tuple(ds.voxel_size) == (32, 32, 35)
