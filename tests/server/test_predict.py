"""Dense prediction into webKnossos layers: planning, one chunk, merging, the written files."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch

from models.networks import Classifier
from server.errors import InvalidInput
from server.labels.truth import load_truth
from server.pixels.source import PatchSource
from server.predictions import dense as predict
from server.predictions.finish import finish_prediction, merge_boxes
from server.settings import Settings
from server.sim.synth import make_synthetic_dataset
from server.wklib import wk


def _dataset(path: Path, size: tuple[int, int, int]) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        name="ds",
        path=str(path),
        mag="1-1-1",
        bbox_x=0,
        bbox_y=0,
        bbox_z=0,
        bbox_w=size[0],
        bbox_h=size[1],
        bbox_d=size[2],
        patch_size=140,
        norm_mean=128.0,
        norm_std=40.0,
        layer="color",
        voxel_size=(32.0, 32.0, 35.0),
        settings={},
    )


def test_chunks_cover_the_region_once_along_shard_borders(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, (5000, 3000, 20))
    plan = predict.make_plan(
        ds, {"bbox": [100, 0, 3, 4800, 3000, 15]}, out_root=tmp_path, threshold=0.5
    )
    x0, y0, z0, x1, y1, z1 = plan.cell_range()
    assert (x0, z0, x1, z1) == (3, 3, 154, 18)  # 100 // 32, ceil(4900 / 32)
    covered = np.zeros((x1, y1, z1), dtype=int)
    for bx0, by0, bz0, bx1, by1, bz1 in predict.chunks(plan):
        covered[bx0:bx1, by0:by1, bz0:bz1] += 1
        # a chunk never crosses a shard: no two jobs ever write the same shard
        assert bx0 // predict.BLOCK_CELLS == (bx1 - 1) // predict.BLOCK_CELLS
        assert by0 // predict.BLOCK_CELLS == (by1 - 1) // predict.BLOCK_CELLS
        assert bz0 // predict.BLOCK_SECTIONS == (bz1 - 1) // predict.BLOCK_SECTIONS
    assert (covered[x0:x1, y0:y1, z0:z1] == 1).all()
    assert covered.sum() == (x1 - x0) * (y1 - y0) * (z1 - z0)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"stride": 35}, "stride must be one of 16, 32, 64"),
        ({"threshold": 1.5}, "threshold must be a number between 0 and 1"),
        ({"sections_per_chunk": 0}, "sections_per_chunk must be an integer from 1 to 64"),
        ({"bbox": [0, 0, 0, 10]}, "bbox must be six integers"),
        ({"bbox": [0, 0, 0, 0, 10, 1]}, "must be positive"),
        ({"bbox": [0, 0, 0, 900, 10, 1]}, "is not inside the dataset"),
    ],
)
def test_bad_parameters_are_refused(tmp_path: Path, params: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        predict.validate_params(_dataset(tmp_path, (840, 840, 4)), params)


def test_a_ground_truth_of_clean_patches_only_is_read_not_refused(tmp_path: Path) -> None:
    (tmp_path / "ground_truth.csv").write_text("x,y,z,label\n0,0,0,clean\n140,0,0,clean\n")
    truth = predict.ground_truth(str(tmp_path))
    assert truth is not None
    origins, labels = truth
    assert origins.tolist() == [[0, 0, 0], [140, 0, 0]]
    assert not labels.any()


def test_touching_boxes_merge_into_one_cluster() -> None:
    boxes = [
        [0, 0, 0, 64, 64, 1],
        [64, 0, 0, 32, 32, 1],  # touches the first along x
        [0, 0, 1, 32, 32, 2],  # the next section
        [500, 500, 0, 32, 32, 1],  # alone
    ]
    merged = sorted(merge_boxes(boxes, gap=(32, 32, 1)))
    assert merged == [[0, 0, 0, 96, 64, 3], [500, 500, 0, 32, 32, 1]]


def test_prediction_layers_nml_and_report(tmp_path: Path) -> None:
    make_synthetic_dataset(tmp_path / "ds", seed=1, shape=(840, 10))
    ds = _dataset(tmp_path / "ds", (840, 840, 10))
    plan = predict.make_plan(ds, {}, out_root=tmp_path / "out", threshold=0.5)
    predict.create_output(plan, voxel_size=(32.0, 32.0, 35.0))
    predict.create_output(plan, voxel_size=(32.0, 32.0, 35.0))  # idempotent, as on a retry
    torch.manual_seed(0)
    clf = Classifier().eval()
    truth = load_truth(tmp_path / "ds")
    blocks = predict.chunks(plan)
    assert len(blocks) == 2  # 10 sections: two shards deep
    with PatchSource.open(tmp_path / "ds") as source:
        for i, block in enumerate(blocks):
            prob = predict.predict_block(
                source, clf, plan=plan, block=block, norm=(128.0, 40.0), temperature=1.0
            )
            assert prob.shape == (27, 27, block[5] - block[2])
            predict.write_block(plan, block, prob)
            summary = predict.block_summary(plan, block, prob, truth)
            predict.save_summary(predict.chunk_file(plan, i), summary)
            if i == 0:
                # the map's cell holds the per-patch classifier's answer for the patch
                # centred on it (a full-size interior patch, read directly)
                cx, cy, z = 10, 12, 3
                x0, y0 = cx * 32 + 16 - 70, cy * 32 + 16 - 70
                patch = source.read_region((x0, y0, z), (140, 140)).astype(np.float32)
                with torch.no_grad():
                    logit = clf(torch.from_numpy((patch - 128.0) / 40.0)[None, None])[0]
                assert prob[cx, cy, z] == pytest.approx(float(torch.sigmoid(logit)), abs=0.05)
    report = finish_prediction(
        plan, n_chunks=len(blocks), dataset=ds, settings=Settings(data_dir=tmp_path / "data")
    )

    out = wk.Dataset.open(plan.out_path)
    assert set(out.layers) == set(predict.LAYERS)
    prob_layer = out.get_layer(predict.PROB_LAYER)
    assert prob_layer.category == "color" and prob_layer.dtype_per_channel == np.float32
    assert prob_layer.default_view_configuration.color == (255, 0, 0)
    mask_layer = out.get_layer(predict.MASK_LAYER)
    assert mask_layer.category == "segmentation"
    prob = prob_layer.get_mag("32-32-1").read()[0, :27, :27, :10]
    mask = mask_layer.get_mag("32-32-1").read()[0, :27, :27, :10]
    assert np.isfinite(prob).all() and (prob >= 0).all() and (prob <= 1).all()
    assert (mask == (prob >= plan.threshold)).all()

    nml = wk.Annotation.load(Path(report["nml"]))
    assert len(nml.user_bounding_boxes) == report["clusters"]
    assert report["cells"] == 27 * 27 * 10
    assert report["artifact_cells"] == int(mask.sum())
    gt = report["ground_truth"]
    assert gt["patches"] == len(truth[0]) and 0.0 <= gt["pr_auc"] <= 1.0
    # the per-section QC adds up to the totals
    assert [s["z"] for s in report["sections"]] == list(range(10))
    assert sum(s["artifact_cells"] for s in report["sections"]) == report["artifact_cells"]
    assert (Path(plan.out_path) / "sections.csv").is_file()


EM_ID = "6980c803d10000d7de2cc080"


def test_prediction_is_published_next_to_the_em_on_the_server(tmp_path: Path) -> None:
    """With a server configured and the dataset linked to its copy there, the prediction's
    layers are uploaded as a server dataset with the EM layer linked into it, and the NML
    names that dataset."""
    from tests.wkserver import serve

    make_synthetic_dataset(tmp_path / "ds", seed=4, shape=(420, 2))
    ds = _dataset(tmp_path / "ds", (420, 420, 2))
    ds.name = "mSEM run 3.v2"
    ds.settings = {"webknossos": {"dataset_id": EM_ID, "push": False}}
    plan = predict.make_plan(ds, {}, out_root=tmp_path / "out", threshold=0.5)
    predict.create_output(plan, voxel_size=ds.voxel_size)
    torch.manual_seed(0)
    clf = Classifier().eval()
    blocks = predict.chunks(plan)
    with PatchSource.open(tmp_path / "ds") as source:
        for i, block in enumerate(blocks):
            prob = predict.predict_block(
                source, clf, plan=plan, block=block, norm=(128.0, 40.0), temperature=1.0
            )
            predict.write_block(plan, block, prob)
            summary = predict.block_summary(plan, block, prob, None)
            predict.save_summary(predict.chunk_file(plan, i), summary)
    with serve("wk-token") as fake:
        fake.add_dataset(EM_ID, tmp_path / "ds", name="mSEM run 3.v2")
        settings = Settings(data_dir=tmp_path / "data", wk_url=fake.url, wk_token="wk-token")
        report = finish_prediction(plan, n_chunks=len(blocks), dataset=ds, settings=settings)
        published = report["webknossos"]
        again = finish_prediction(plan, n_chunks=len(blocks), dataset=ds, settings=settings)
        assert again["webknossos"] == published  # published once
        assert sum(1 for r in fake.state.requests if r.endswith("/finishUpload")) == 1

        with wk.webknossos_context(url=fake.url, token="wk-token"):
            remote = wk.RemoteDataset.open(dataset_id=published["dataset_id"])
            assert set(remote.layers) == {"color", *predict.LAYERS}
            assert remote.name == "mSEM_run_3.v2_artifact_pred"  # the server allows no spaces
            # the EM is the server dataset's own layer, linked, not a copy
            assert fake.dataset(remote.dataset_id).linked == {"color": (EM_ID, "color")}
            em = (
                remote.get_layer("color")
                .get_mag(1)
                .read(absolute_offset=(0, 0, 0), size=(64, 64, 2))
            )
            local = wk.Dataset.open(tmp_path / "ds").get_layer("color").get_mag(1)
            assert np.array_equal(em, local.read(absolute_offset=(0, 0, 0), size=(64, 64, 2)))
            there = remote.get_layer(predict.PROB_LAYER).get_mag("32-32-1").read()
            here = wk.Dataset.open(plan.out_path).get_layer(predict.PROB_LAYER).get_mag("32-32-1")
            assert np.array_equal(there, here.read())
        nml = wk.Annotation.load(Path(report["nml"]))
        assert (nml.dataset_name, nml.dataset_id) == (remote.name, remote.dataset_id)
        assert len(nml.user_bounding_boxes) == report["clusters"]
