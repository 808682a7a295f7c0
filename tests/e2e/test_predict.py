"""A predict job through the API, with its worker SIGKILLed half-way: the map still completes,
every chunk readable, the mask and the NML agree with it. PostgreSQL + Redis, real workers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from server.wklib import wk
from tests.processes import (
    api_with_dataset,
    celery_worker,
    kill_process,
    wait_for,
)


@pytest.mark.postgres
@pytest.mark.redis
def test_predict_survives_a_killed_worker(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    setup = api_with_dataset(pg_url, redis_url, tmp_path, seed=5, shape=(1400, 16))
    with setup as (env, http, dataset):
        with celery_worker(env, queues="gpu,io", name="predictor", log=tmp_path / "w1.log") as proc:
            ds = http.post("/datasets", json={"name": "p", "path": str(dataset)}).json()["id"]
            wait_for(
                lambda: http.get(f"/datasets/{ds}").json()["active_models"]["ae"], "pretraining"
            )
            with (dataset / "ground_truth.csv").open() as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["z"]) % 2 == 0]
            for r in rows[:300]:
                label = {"x": int(r["x"]), "y": int(r["y"]), "z": int(r["z"]), "label": r["label"]}
                assert http.post(f"/datasets/{ds}/labels", json=label).status_code == 201
            train = http.post(
                f"/datasets/{ds}/jobs", json={"kind": "train", "params": {"epochs": 8}}
            ).json()["job"]
            wait_for(
                lambda: http.get(f"/jobs/{train['id']}").json()["state"] == "succeeded",
                "training",
            )

            # bad parameters never reach a worker
            bad = http.post(
                f"/datasets/{ds}/jobs",
                json={"kind": "predict", "params": {"bbox": [0, 0, 0, 9999, 10, 1]}},
            )
            assert bad.status_code == 422 and "not inside the dataset" in bad.json()["detail"]

            job = http.post(
                f"/datasets/{ds}/jobs",
                json={"kind": "predict", "params": {"sections_per_chunk": 1}},
            ).json()["job"]

            def chunks_done() -> int:
                detail = http.get(f"/jobs/{job['id']}").json()
                msg = detail["message"] or ""
                return int(msg.split(" of ")[0]) if " of " in msg else 0

            wait_for(lambda: chunks_done() >= 3, "the first chunks", every=0.1)
            kill_process(proc)  # SIGKILL, like the OOM killer, with chunks left to do
        left = http.get(f"/jobs/{job['id']}").json()
        assert left["state"] == "running" and chunks_done() < 16, left["message"]

        # the worker comes back under the same name: the lost chunk is run again
        with celery_worker(env, queues="gpu,io", name="predictor", log=tmp_path / "w2.log"):
            done = wait_for(
                lambda: (
                    (j := http.get(f"/jobs/{job['id']}").json())["state"] in ("succeeded", "failed")
                    and j
                ),
                "the rest of the prediction",
            )
        assert done["state"] == "succeeded", done["error"]
        result = done["result"]
        assert result["chunks"] == 16

    out = wk.Dataset.open(result["output"])
    prob = out.get_layer("artifact_prob").get_mag(result["mag"]).read()[0]
    mask = out.get_layer("artifact_mask").get_mag(result["mag"]).read()[0]
    cells = -(-1400 // 32)
    prob, mask = prob[:cells, :cells, :16], mask[:cells, :cells, :16]
    assert np.isfinite(prob).all() and (prob >= 0).all() and (prob <= 1).all()
    assert (prob > 0).all(), "every chunk was written"
    assert (mask == (prob >= result["threshold"])).all()
    assert result["artifact_cells"] == int(mask.sum())
    nml = wk.Annotation.load(Path(result["nml"]))
    assert len(nml.user_bounding_boxes) == result["clusters"] > 0
    # a classifier trained on 300 labels already ranks artifacts well above chance (~0.1)
    assert result["ground_truth"]["pr_auc"] > 0.3
    # the per-section QC: every section, adding up to the map's cells above threshold
    assert [s["z"] for s in result["sections"]] == list(range(16))
    assert sum(s["artifact_cells"] for s in result["sections"]) == result["artifact_cells"]
    assert Path(result["sections_csv"]).is_file() and result["webknossos"] is None
