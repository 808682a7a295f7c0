"""Publishing a prediction puts its voxels on the server: the stand-in's datastore (its own data
folder; paths leaving an uploaded dataset refused at finishUpload, as a current datastore
does) receives the layers' data and serves back exactly what the local layers hold, at API 13
and at API 16; a name with spaces and dots publishes under the server's rule for names."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from server.predictions import dense as predict
from server.predictions.finish import finish_prediction
from server.settings import Settings
from server.sim.synth import make_synthetic_dataset
from server.webknossos.client import WebknossosError, server
from server.webknossos.datasets import _check_name, server_dataset_name
from server.wklib import wk
from tests.wkserver import DISALLOWED_PATHS, serve

TOKEN = "wk-secret-token"
EM_ID = "6980c803d10000d7de2cc080"
SIDE, SECTIONS = 420, 2


def _predicted(tmp_path: Path) -> tuple[types.SimpleNamespace, predict.Plan]:
    """A dataset linked to the server's EM and a finished dense map of it (p from a seeded
    random generator: what matters here is that the server holds the same numbers)."""
    make_synthetic_dataset(tmp_path / "ds", seed=3, shape=(SIDE, SECTIONS), artifact_rate=0.0)
    dataset = types.SimpleNamespace(
        name="brain1 run 3.v2", path=str(tmp_path / "ds"), mag="1-1-1", layer="color",
        voxel_size=(32.0, 32.0, 35.0), settings={"webknossos": {"dataset_id": EM_ID}},
        bbox_x=0, bbox_y=0, bbox_z=0, bbox_w=SIDE, bbox_h=SIDE, bbox_d=SECTIONS, patch_size=140,
    )  # fmt: skip
    plan = predict.make_plan(dataset, {}, out_root=tmp_path / "out", threshold=0.5)
    predict.create_output(plan, voxel_size=dataset.voxel_size)
    rng = np.random.default_rng(7)
    for i, block in enumerate(predict.chunks(plan)):
        x0, y0, z0, x1, y1, z1 = block
        prob = rng.random((x1 - x0, y1 - y0, z1 - z0), dtype=np.float32)
        predict.write_block(plan, block, prob)
        predict.save_summary(
            predict.chunk_file(plan, i), predict.block_summary(plan, block, prob, None)
        )
    return dataset, plan


@pytest.mark.parametrize("api_version", [13, 16])
def test_the_server_holds_the_prediction_voxels(tmp_path: Path, api_version: int) -> None:
    dataset, plan = _predicted(tmp_path)
    with serve(TOKEN, api_version=api_version) as fake:
        fake.add_dataset(EM_ID, Path(dataset.path), name=dataset.name)
        settings = Settings(data_dir=tmp_path / "data", wk_url=fake.url, wk_token=TOKEN)
        report = finish_prediction(
            plan, n_chunks=len(predict.chunks(plan)), dataset=dataset, settings=settings
        )
        published = report["webknossos"]
        # announced 16, the library (4.3) reaches the datastore by its v15 client: current routes
        finish = (
            "/datasets/upload/dataset/finishUpload"
            if api_version > 13
            else "/v13/datasets/finishUpload"
        )
        assert any(
            r.startswith("POST /data/v1") and r.endswith(finish) for r in fake.state.requests
        )
        assert f"GET /datasets/{published['name']}/isValidNewName" in fake.state.requests
        assert published["name"] == "brain1_run_3.v2_artifact_pred"
        stored = fake.dataset(published["dataset_id"])
        # the datastore's own folder holds the layers' files, nothing of this machine's
        assert fake.root in stored.path.parents
        files = [f for f in stored.path.rglob("*") if f.is_file()]
        assert len(files) > 10 and not any("chunks" in f.parts for f in files)
        assert stored.linked == {"color": (EM_ID, "color")}
        mag = wk.Mag(plan.out_mag)
        local = wk.Dataset.open(plan.out_path)
        ours = {name: local.get_layer(name).get_mag(mag).read() for name in predict.LAYERS}
        unsure, prob = ours[predict.UNCERTAINTY_LAYER], ours[predict.PROB_LAYER]
        assert np.allclose(unsure, 1 - np.abs(2 * prob - 1))
        # the service's copy gone: what the server shows can only come from its own folder
        for name in predict.LAYERS:
            shutil.rmtree(Path(plan.out_path) / name)
        with wk.webknossos_context(url=fake.url, token=TOKEN):
            remote = wk.RemoteDataset.open(dataset_id=published["dataset_id"])
            assert set(remote.layers) == {"color", *predict.LAYERS}
            for name in predict.LAYERS:
                theirs = remote.get_layer(name).get_mag(mag).read()
                assert theirs.dtype == ours[name].dtype, name
                assert np.array_equal(theirs, ours[name]), name
    nml = wk.Annotation.load(Path(report["nml"]))
    assert (nml.dataset_name, nml.dataset_id) == (published["name"], published["dataset_id"])


def test_a_shallow_copy_with_paths_of_this_machine_is_refused(tmp_path: Path) -> None:
    """What publishing used to send: the layers by absolute path. A current datastore refuses
    it at finishUpload; so does the stand-in, in the datastore's words."""
    _dataset, plan = _predicted(tmp_path)
    local = wk.Dataset.open(plan.out_path)
    with serve(TOKEN, api_version=16) as fake:
        settings = Settings(data_dir=tmp_path / "data", wk_url=fake.url, wk_token=TOKEN)
        shallow = local.shallow_copy_dataset(tmp_path / "shallow", name="shallow_copy")
        with pytest.raises(WebknossosError) as refused, server(settings):
            shallow.upload(new_dataset_name="shallow_copy")
    said = str(refused.value)
    assert DISALLOWED_PATHS in said and "answered 400" in said
    # API 16: the controller's finishFailed over the datastore's cause (tests/wkserver.py)
    assert "Could not finalize upload for dataset" in said


def test_names_follow_the_server_rule_and_a_refused_one_says_why(tmp_path: Path) -> None:
    assert server_dataset_name("brain1 run 3.v2_artifact_pred") == "brain1_run_3.v2_artifact_pred"
    assert server_dataset_name(".hidden/é ü") == "hidden_"
    assert server_dataset_name("x") == "x_dataset"
    with serve(TOKEN) as fake:
        settings = Settings(data_dir=tmp_path / "data", wk_url=fake.url, wk_token=TOKEN)
        with server(settings):
            _check_name("brain1_run_3.v2_artifact_pred")
            with pytest.raises(WebknossosError, match="use at least three characters"):
                _check_name("ab")


def test_a_server_in_another_process_holds_the_voxels(tmp_path: Path) -> None:
    """The stand-in as its own process with its own data folder: after the upload the
    service's layers are deleted, and the server still serves the same values."""
    dataset, plan = _predicted(tmp_path)
    command = [sys.executable, "-m", "tests.wkserver", "--token", TOKEN, "--api-version", "16",
               "--dataset", f"{EM_ID}={dataset.path}:{dataset.name}"]  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    with subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True) as other:
        try:
            assert other.stdout is not None
            url, data_folder = other.stdout.readline().strip(), other.stdout.readline().strip()
            settings = Settings(data_dir=tmp_path / "data", wk_url=url, wk_token=TOKEN)
            report = finish_prediction(
                plan, n_chunks=len(predict.chunks(plan)), dataset=dataset, settings=settings
            )
            mag = wk.Mag(plan.out_mag)
            local = wk.Dataset.open(plan.out_path)
            ours = {name: local.get_layer(name).get_mag(mag).read() for name in predict.LAYERS}
            shutil.rmtree(plan.out_path)
            assert not Path(plan.out_path).is_relative_to(data_folder)
            with wk.webknossos_context(url=url, token=TOKEN):
                remote = wk.RemoteDataset.open(dataset_id=report["webknossos"]["dataset_id"])
                for name in predict.LAYERS:
                    theirs = remote.get_layer(name).get_mag(mag).read()
                    assert np.array_equal(theirs, ours[name]), name
        finally:
            other.terminate()
