"""Per-field QC of a dense prediction: one missing field of a 4x4 montage and a charging region
over a third of a section are both on the re-image list, with the field, its fraction and what
was found; a clean section is not."""

from __future__ import annotations

import csv
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from models.training import train_classifier
from server.errors import InvalidInput
from server.pixels.source import PatchSource
from server.predictions import dense as predict
from server.predictions.finish import finish_prediction
from server.predictions.qc import Fields, parse_grid
from server.settings import Settings
from server.sim.montage import paint_charging, paint_missing_field
from server.sim.synth import make_synthetic_dataset
from server.wklib import wk

SIDE, SECTIONS = 840, 4
MISSING_Z, CHARGING_Z = 1, 2
MISSING_FIELD = (2, 1)


def clean_patches(tmp_path: Path) -> np.ndarray:
    """The 140 x 140 grid patches of two clean synthetic sections (training material)."""
    make_synthetic_dataset(tmp_path / "train", seed=11, shape=(SIDE, 2), artifact_rate=0.0)
    with PatchSource.open(tmp_path / "train") as source:
        origins = np.asarray(
            [(x, y, z) for z in range(2) for y in range(0, SIDE, 140) for x in range(0, SIDE, 140)]
        )
        return source.read_patches(origins).astype(np.float32)


def _classifier(tmp_path: Path) -> torch.nn.Module:
    """Trained on clean patches, patches with a blank part and patches with a bright charging
    part, from another synthetic dataset (a few epochs tell them apart)."""
    clean = clean_patches(tmp_path)
    rng = np.random.default_rng(0)
    blank, bright = clean.copy(), clean.copy()
    for b, c in zip(blank, bright, strict=True):
        share = rng.uniform(0.5, 1.0)
        b[:, : int(share * 140)] = rng.choice([0.0, 255.0])
        c[:, : int(share * 140)] = np.clip(c[:, : int(share * 140)] + 90.0, 0, 255)
    patches = (np.concatenate([clean, blank, bright]) - 128.0) / 40.0
    labels = np.concatenate([np.zeros(len(clean)), np.ones(2 * len(clean))])
    result = train_classifier(
        patches[:, None], labels, epochs=8, min_epochs=3, patience=4, tta=1, device="cpu"
    )
    return result.model.eval()


def synthetic_dataset(
    tmp_path: Path, *, name: str = "montage 7.v2", sections: int = SECTIONS
) -> types.SimpleNamespace:
    """The dataset row of a synthetic ``SIDE`` x ``SIDE`` dataset in ``tmp_path / "ds"``."""
    return types.SimpleNamespace(
        name=name,
        path=str(tmp_path / "ds"),
        mag="1-1-1",
        layer="color",
        voxel_size=(32.0, 32.0, 35.0),
        settings={},
        bbox_x=0,
        bbox_y=0,
        bbox_z=0,
        bbox_w=SIDE,
        bbox_h=SIDE,
        bbox_d=sections,
        patch_size=140,
    )


def test_a_missing_field_and_a_charging_third_are_flagged_a_clean_section_not(
    tmp_path: Path,
) -> None:
    make_synthetic_dataset(tmp_path / "ds", seed=5, shape=(SIDE, SECTIONS), artifact_rate=0.0)
    color = wk.Dataset.open(tmp_path / "ds").get_layer("color").get_mag(1)
    sections = color.read(absolute_offset=(0, 0, 0), size=(SIDE, SIDE, SECTIONS))[0]
    missing = sections[:, :, MISSING_Z].T.copy()
    paint_missing_field(missing, grid=(4, 4), field=MISSING_FIELD)
    charging = sections[:, :, CHARGING_Z].T.copy()
    covered = paint_charging(charging, rng=np.random.default_rng(3), share=0.36)
    assert 0.33 < covered.mean() < 0.4
    for z, image in ((MISSING_Z, missing), (CHARGING_Z, charging)):
        color.write(image.T[None, :, :, None], absolute_offset=(0, 0, z), allow_unaligned=True)
    classifier = _classifier(tmp_path)
    dataset = synthetic_dataset(tmp_path)
    plan = predict.make_plan(
        dataset, {"sections_per_chunk": 2}, out_root=tmp_path / "out", threshold=0.5
    )
    assert plan.field_grid == (4, 4) and plan.field_size is None
    predict.create_output(plan, voxel_size=dataset.voxel_size)
    with PatchSource.open(tmp_path / "ds") as source:
        n_chunks = predict.predict_in_process(
            plan, source, classifier, norm=(128.0, 40.0), temperature=1.0
        )
    report = finish_prediction(
        plan, n_chunks=n_chunks, dataset=dataset, settings=Settings(data_dir=tmp_path / "d")
    )

    by_z = {s["z"]: s for s in report["sections"]}
    # whole-section fractions stay under the old rule's 0.5: only the fields find these
    assert by_z[MISSING_Z]["fraction"] < 0.5 and by_z[CHARGING_Z]["fraction"] < 0.5
    assert report["reimage_sections"] == [MISSING_Z, CHARGING_Z]
    assert by_z[MISSING_Z]["fields_flagged"] == [list(MISSING_FIELD)]
    assert by_z[0]["fields_flagged"] == [] and by_z[3]["fields_flagged"] == []
    entries = {(e["z"], tuple(e.get("field") or ())): e for e in report["reimage"]}
    gone = entries[(MISSING_Z, MISSING_FIELD)]
    assert gone["scope"] == "field" and gone["types"] == ["missing"]
    assert gone["box"] == [420, 210, MISSING_Z, 210, 210, 1] and gone["fraction"] > 0.6
    assert "blank (missing field)" in gone["reason"]
    charged = [e for e in report["reimage"] if e["z"] == CHARGING_Z]
    assert charged and all(e["types"] == ["artifact"] for e in charged)
    assert {z for z, _ in entries} == {MISSING_Z, CHARGING_Z}

    with Path(report["fields_csv"]).open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == SECTIONS * 16
    flagged = {
        (int(r["z"]), int(r["field_x"]), int(r["field_y"])) for r in rows if r["reimage"] == "1"
    }
    assert (MISSING_Z, *MISSING_FIELD) in flagged and {z for z, _, _ in flagged} == {1, 2}
    with Path(report["sections_csv"]).open() as fh:
        section_rows = list(csv.DictReader(fh))
    assert [int(r["z"]) for r in section_rows if r["reimage"] == "1"] == [MISSING_Z, CHARGING_Z]
    assert section_rows[MISSING_Z]["fields_flagged"] == "2,1"


def test_the_dataset_tile_grid_replaces_the_configured_one() -> None:
    dataset = types.SimpleNamespace(
        name="tiles", mag="1-1-1", settings={"tile_size": [300, 200]}, patch_size=140,
        bbox_x=100, bbox_y=0, bbox_z=0, bbox_w=900, bbox_h=400, bbox_d=2,
    )  # fmt: skip
    plan = predict.make_plan(dataset, {}, out_root=Path("/nowhere"), threshold=0.5)
    fields = Fields.of_plan(plan)
    assert fields.count == (3, 2) and fields.box(2, 1, 0) == [700, 200, 0, 300, 200, 1]
    assert fields.index(np.asarray([100.0, 399.0, 400.0, 999.0]), 0).tolist() == [0, 0, 1, 2]
    grid = predict.make_plan(
        types.SimpleNamespace(**{**vars(dataset), "settings": {}}),
        {"field_grid": "2x8"},
        out_root=Path("/nowhere"),
        threshold=0.5,
        field_grid=(4, 4),
    )
    assert grid.field_grid == (2, 8) and grid.field_size is None
    assert parse_grid("16x3") == (16, 3)
    for bad in ("4", "0x4", "axb"):
        with pytest.raises(ValueError):
            parse_grid(bad)
    with pytest.raises(InvalidInput):
        predict.validate_params(dataset, {"field_grid": "4by4"})
    with pytest.raises(InvalidInput):
        predict.validate_params(dataset, {"field_rate": 0})
