"""Per-section QC of a dense prediction: a section whose beam tiles went missing across most
of it is flagged for re-imaging, in the report and in the CSV for the imaging team."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from models.training import train_classifier
from server.pixels.source import PatchSource
from server.predictions import dense as predict
from server.predictions.finish import finish_prediction
from server.settings import Settings
from server.sim.synth import make_synthetic_dataset
from server.wklib import wk
from tests.server.test_predict_fields import clean_patches, synthetic_dataset

SIDE, SECTIONS, BAD = 840, 6, 3


def _missing_tiles(rng: np.random.Generator, patch: np.ndarray) -> np.ndarray:
    """A patch whose beam tile is blank: a constant rectangle over a good part of it (as
    :func:`server.sim.synth._paint_missing` paints them)."""
    out = patch.copy()
    h, w = out.shape
    th, tw = int(rng.uniform(0.5, 1.0) * h), int(rng.uniform(0.5, 1.0) * w)
    y0, x0 = int(rng.integers(0, h - th + 1)), int(rng.integers(0, w - tw + 1))
    out[y0 : y0 + th, x0 : x0 + tw] = rng.choice([0.0, 255.0, rng.uniform(20, 230)])
    return out


def _classifier(tmp_path: Path) -> torch.nn.Module:
    """A classifier trained on clean patches and patches with missing tiles from another
    synthetic dataset (the two are easy to tell apart: a few epochs do)."""
    clean = clean_patches(tmp_path)
    rng = np.random.default_rng(0)
    missing = np.stack([_missing_tiles(rng, p) for p in clean])
    patches = (np.concatenate([clean, missing]) - 128.0) / 40.0
    labels = np.concatenate([np.zeros(len(clean)), np.ones(len(missing))])
    result = train_classifier(
        patches[:, None], labels, epochs=8, min_epochs=3, patience=4, tta=1, device="cpu"
    )
    return result.model.eval()


def test_a_section_with_missing_tiles_is_flagged_for_reimaging(tmp_path: Path) -> None:
    make_synthetic_dataset(tmp_path / "ds", seed=5, shape=(SIDE, SECTIONS), artifact_rate=0.0)
    # section 3: the beam tiles over 85% of its area came back blank
    color = wk.Dataset.open(tmp_path / "ds").get_layer("color").get_mag(1)
    blank = int(SIDE * 0.92)
    color.write(
        np.zeros((1, blank, blank, 1), dtype=np.uint8),
        absolute_offset=(0, 0, BAD),
        allow_unaligned=True,
    )
    classifier = _classifier(tmp_path)
    dataset = synthetic_dataset(tmp_path, name="qc run 1.0", sections=SECTIONS)
    plan = predict.make_plan(
        dataset, {"sections_per_chunk": 2}, out_root=tmp_path / "out", threshold=0.5
    )
    predict.create_output(plan, voxel_size=dataset.voxel_size)
    blocks = predict.chunks(plan)
    with PatchSource.open(tmp_path / "ds") as source:
        for i, block in enumerate(blocks):
            prob = predict.predict_block(
                source,
                classifier,
                plan=plan,
                block=block,
                norm=(128.0, 40.0),
                temperature=1.0,
            )
            predict.write_block(plan, block, prob)
            predict.save_summary(
                predict.chunk_file(plan, i), predict.block_summary(plan, block, prob, None)
            )
    report = finish_prediction(
        plan, n_chunks=len(blocks), dataset=dataset, settings=Settings(data_dir=tmp_path / "data")
    )

    by_z = {s["z"]: s for s in report["sections"]}
    assert sorted(by_z) == list(range(SECTIONS))
    assert all(s["cells"] == 27 * 27 for s in by_z.values())
    assert by_z[BAD]["fraction"] >= plan.reimage_rate and by_z[BAD]["reimage"]
    assert report["reimage_sections"] == [BAD]
    assert max(s["fraction"] for z, s in by_z.items() if z != BAD) < plan.reimage_rate
    assert report["webknossos"] is None  # no server configured: written locally only
    with Path(report["sections_csv"]).open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["z"]) for r in rows if r["reimage"] == "1"] == [BAD]
    assert float(rows[BAD]["fraction_above_threshold"]) == by_z[BAD]["fraction"]
    # the NML names the project's dataset when nothing was published
    nml = wk.Annotation.load(Path(report["nml"]))
    assert nml.dataset_name == "qc run 1.0"
    assert len(nml.user_bounding_boxes) == report["clusters"] >= 1
