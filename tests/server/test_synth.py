"""The synthetic mSEM dataset: deterministic, readable, with ground truth that matches its mask."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from models.vocab import ARTIFACT_TYPES, artifact_type_name
from server.errors import InvalidInput
from server.pixels.grid import Grid
from server.pixels.source import PatchSource
from server.sim import synth
from server.sim.synth import MIN_COVERAGE, PATCH, SynthSummary, make_synthetic_dataset

REQUIRED_KINDS = {"circular", "horseshoe", "scratch", "debris", "missing", "defocus"}
TINY = (840, 3)  # 6 x 6 x 3 patches: fast enough to make several times


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "small", seed=0)


def _truth(path: Path) -> list[dict[str, str]]:
    with (path / "ground_truth.csv").open() as fh:
        return list(csv.DictReader(fh))


def _section(path: Path, layer: str, z: int, *, mag: int = 1) -> np.ndarray:
    with PatchSource.open(path, layer=layer, mag=f"{mag}-{mag}-1") as source:
        x, y, _ = source.info.bbox_size
        return source.read_region((0, 0, z), (x // mag, y // mag))


def test_small_has_the_promised_layout(small: SynthSummary) -> None:
    from server.wklib import wk

    assert small.n_patches == 14 * 14 * 20 <= 5000
    assert small.shape == (1960, 1960, 20)
    ds = wk.Dataset.open(small.path)
    assert tuple(ds.voxel_size) == (32, 32, 35)
    for name in ("color", "artifact_mask"):
        layer = ds.get_layer(name)
        assert layer.dtype_per_channel == np.uint8
        assert layer.data_format.value == "zarr3"
        assert sorted(m.to_layer_name() for m in layer.mags) == ["1", "2-2-1", "4-4-1"]
        assert layer.bounding_box.size.to_tuple() == (1960, 1960, 20)
    assert ds.get_layer("color").category == "color"
    assert ds.get_layer("artifact_mask").category == "segmentation"


def test_prevalence_about_five_percent_and_every_kind_present(small: SynthSummary) -> None:
    share = small.n_artifact_patches / small.n_patches
    assert 0.03 <= share <= 0.075, share
    assert set(small.per_type) >= REQUIRED_KINDS
    assert set(small.per_type) <= set(ARTIFACT_TYPES)
    assert sum(small.per_type.values()) == small.n_artifact_patches
    # a fair share is subtle, and no kind is a token presence
    assert 0.15 <= small.n_subtle / sum(small.n_artifacts.values()) <= 0.6
    assert min(small.per_type[k] for k in REQUIRED_KINDS) >= 3
    rows = _truth(small.path)
    assert sum(r["label"] == "artifact" for r in rows) == small.n_artifact_patches
    assert all((r["label"] == "artifact") == bool(r["type"]) for r in rows)


def test_ground_truth_follows_the_grid_and_matches_the_mask(small: SynthSummary) -> None:
    rows = _truth(small.path)
    assert list(rows[0]) == ["x", "y", "z", "w", "h", "label", "type"]
    with PatchSource.open(small.path) as source:
        info = source.info
    grid = Grid(offset=info.bbox_offset, size=info.bbox_size, patch=PATCH, stride=PATCH)
    assert len(rows) == len(grid) == small.n_patches
    origins = np.array([[int(r["x"]), int(r["y"]), int(r["z"])] for r in rows])
    assert np.array_equal(origins, grid.origins(np.arange(len(grid))))
    assert {(r["w"], r["h"]) for r in rows} == {(str(PATCH), str(PATCH))}

    n = small.shape[0] // PATCH
    for z in range(small.shape[2]):
        mask = _section(small.path, "artifact_mask", z)
        tiles = mask.reshape(n, PATCH, n, PATCH).transpose(0, 2, 1, 3).reshape(n * n, -1)
        for i, row in enumerate(rows[z * n * n : (z + 1) * n * n]):
            counts = np.bincount(tiles[i], minlength=len(ARTIFACT_TYPES) + 1)[1:]
            is_artifact = counts.sum() >= MIN_COVERAGE * PATCH * PATCH
            assert (row["label"] == "artifact") == is_artifact, row
            if is_artifact:
                assert row["type"] == artifact_type_name(int(np.argmax(counts)) + 1), row


def test_coarser_mags_are_downsampled_from_mag_1(small: SynthSummary) -> None:
    z = 7
    color = _section(small.path, "color", z).astype(np.float32)
    mask = _section(small.path, "artifact_mask", z)
    for f in (2, 4):
        w = color.shape[0] // f
        expected = np.rint(color.reshape(w, f, w, f).mean(axis=(1, 3))).astype(np.uint8)
        assert np.array_equal(_section(small.path, "color", z, mag=f), expected)
        pooled = mask.reshape(w, f, w, f).max(axis=(1, 3))
        assert np.array_equal(_section(small.path, "artifact_mask", z, mag=f), pooled)


def test_looks_like_tissue_not_like_constants(small: SynthSummary) -> None:
    section = _section(small.path, "color", 3).astype(np.float32)
    mask = _section(small.path, "artifact_mask", 3)
    clean = section[mask == 0]
    assert 120 < clean.mean() < 170 and 20 < clean.std() < 50
    # detector noise: neighbouring pixels differ even in clean tissue
    assert np.abs(np.diff(section, axis=1))[mask[:, 1:] == 0].mean() > 5


def test_same_seed_same_data_other_seed_other_data(tmp_path: Path) -> None:
    made = {
        name: make_synthetic_dataset(tmp_path / name, seed=seed, shape=TINY, artifact_rate=3.0)
        for name, seed in (("a", 11), ("b", 11), ("c", 12))
    }
    region = ((0, 0, 0), (TINY[0], TINY[0]))
    data = {}
    for name, summary in made.items():
        with (
            PatchSource.open(summary.path, layer="color") as color,
            PatchSource.open(summary.path, layer="artifact_mask") as mask,
        ):
            data[name] = (
                color.read_region(*region).tobytes() + mask.read_region(*region).tobytes(),
                (summary.path / "ground_truth.csv").read_bytes(),
            )
    assert data["a"] == data["b"]
    assert data["a"][0] != data["c"][0]
    assert made["a"].per_type == made["b"].per_type


def test_refuses_a_non_empty_folder_and_bad_shapes(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(InvalidInput, match="not an empty folder"):
        make_synthetic_dataset(tmp_path / "full", shape=TINY)
    with pytest.raises(InvalidInput, match="multiple of 140"):
        make_synthetic_dataset(tmp_path / "odd", shape=(150, 2))
    with pytest.raises(InvalidInput, match="unknown size"):
        make_synthetic_dataset(tmp_path / "huge", size="huge")  # type: ignore[arg-type]


def test_opens_and_registers_as_a_dataset(small: SynthSummary, sqlite_url: str) -> None:
    from server.datasets.service import grid_of, open_source, register_dataset
    from server.db import migrate
    from server.db.base import make_engine, make_sessionmaker, session_scope

    migrate.upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            dataset = register_dataset(session, name="synthetic", path=str(small.path))
            grid = grid_of(dataset)
            assert len(grid) == small.n_patches
            assert 120 < dataset.norm_mean < 170 and dataset.norm_std > 10
            rows = _truth(small.path)
            artifacts = [i for i, r in enumerate(rows) if r["label"] == "artifact"]
            picked = [*artifacts[:5], 0, 1]
            with open_source(dataset) as source:
                batch = source.read_patches(grid.origins(picked))
                for patch, origin in zip(batch, grid.origins(picked), strict=True):
                    x, y, z = (int(v) for v in origin)
                    assert np.array_equal(patch, source.read_region((x, y, z), (PATCH, PATCH)))
    finally:
        engine.dispose()


def test_cli_synth_prints_its_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from server.cli.main import app

    monkeypatch.setitem(synth.SHAPES, "small", TINY)
    runner = CliRunner()
    result = runner.invoke(app, ["synth", str(tmp_path / "s"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "108 patches of 140 x 140" in said and "with artifacts" in said
    assert "ground_truth.csv" in said and "artifact patches by type:" in said
    assert (tmp_path / "s" / "ground_truth.csv").is_file()

    again = runner.invoke(app, ["synth", str(tmp_path / "s")])
    assert again.exit_code == 1
    assert "not an empty folder" in " ".join(again.output.split())
    assert "Traceback" not in again.output
    bad = runner.invoke(app, ["synth", str(tmp_path / "t"), "--size", "enormous"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert "use small, medium, large or huge" in " ".join(bad.output.split())


def test_a_repeated_dataset_reads_its_written_sections_again_at_every_depth(
    tmp_path: Path, sqlite_url: str
) -> None:
    """``synth --size huge`` in small: 32 sections written, 100 readable, disk for 32."""
    from server.datasets.service import grid_of, open_source, register_dataset
    from server.db import migrate
    from server.db.base import make_engine, make_sessionmaker, session_scope
    from server.sim.synth_tiled import make_repeated_dataset

    with pytest.raises(InvalidInput, match="multiple of it"):
        make_repeated_dataset(tmp_path / "bad", width=280, depth=100, written=8)
    summary = make_repeated_dataset(tmp_path / "rep", width=280, depth=100, written=32)
    assert summary.n_patches == 4 * 100 and summary.shape == (280, 280, 100)
    rows = _truth(summary.path)
    assert len(rows) == 400 and [int(r["z"]) for r in rows] == sorted(int(r["z"]) for r in rows)
    for i in (5, 133, 399):  # ground truth of a repeated section is that of its original
        original = rows[i % 128]
        assert rows[i]["label"] == original["label"] and int(rows[i]["z"]) == i // 4
    assert summary.n_artifact_patches == sum(r["label"] == "artifact" for r in rows)
    for mag in (1, 2, 4):
        for layer in ("color", "artifact_mask"):
            assert np.array_equal(
                _section(summary.path, layer, 99, mag=mag),
                _section(summary.path, layer, 3, mag=mag),
            )
    shards = [p for p in (summary.path / "color" / "1" / "c").rglob("*") if p.is_file()]
    assert {p.stat().st_nlink for p in shards} == {4}, "one file, four blocks of 32 sections"
    migrate.upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            dataset = register_dataset(session, name="repeated", path=str(summary.path))
            grid = grid_of(dataset)
            assert len(grid) == 400
            with open_source(dataset) as source:
                far, near = source.read_patches(grid.origins(np.asarray([397, 13])))
                assert np.array_equal(far, near), "patch 397 is patch 13 three blocks on"
    finally:
        engine.dispose()
