"""The webKnossos cycle against a local server answering like real ones (tests/wkserver.py):
proposals pushed as tasks (one refused by the server) -> annotators finish some in
"webKnossos" (files made by the real library) -> sync -> labels in the database, each exactly
once -> retraining. Plus patches labelled in the web page whose tasks get cancelled (unless
someone is working on one), an annotation given by id, a broken annotation, and a wrong
token. PostgreSQL + Redis, real API and worker processes."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import httpx
import pytest

from server.sim.synth import make_synthetic_dataset
from server.wklib import wk
from tests.processes import admin_api, api_server, celery_worker, pg_redis_env, wait_for
from tests.wkserver import ANNOTATOR_ID, serve

TOKEN = "wk-secret-token"
DATASET_ID = "6980c803d10000d7de2cc080"  # the server's ids are 24 hex digits
NAME = "mSEM run 3.v2"  # dataset names may hold spaces and dots; project names may not
PROJECT = "artifact-loop-mSEM_run_3_v2"
REFUSAL = "Invalid bounding box"  # a message of the server's catalogue (boundingBox.invalid)


def _nml(dataset: str, voxel: list[float], box: tuple[int, int, int, int, int], name: str) -> bytes:
    """What an annotator saves: one user bounding box named by its class over the patch."""
    x, y, z, w, h = box
    annotation = wk.Annotation(name="task", dataset_name=dataset, voxel_size=tuple(voxel))
    annotation.user_bounding_boxes.append(wk.BoundingBox((x, y, z), (w, h, 1)).with_name(name))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "annotation.nml"
        annotation.save(path)
        return path.read_bytes()


def _run_sync(http: httpx.Client, ds: int, params: dict | None = None) -> dict:
    job = http.post(f"/datasets/{ds}/jobs", json={"kind": "sync", "params": params or {}}).json()[
        "job"
    ]
    return wait_for(
        lambda: (
            (j := http.get(f"/jobs/{job['id']}").json())["state"] in ("succeeded", "failed") and j
        ),
        "the sync job",
    )


def _jobs(http: httpx.Client, ds: int, kind: str) -> list[dict]:
    r = http.get("/jobs", params={"dataset_id": ds, "kind": kind, "limit": 100})
    assert r.status_code == 200, r.text
    return r.json()["items"]


@pytest.mark.postgres
@pytest.mark.redis
def test_push_finish_sync_retrain(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    dataset = tmp_path / "ds"
    make_synthetic_dataset(dataset, seed=6, shape=(840, 6), artifact_rate=3.0)
    with (dataset / "ground_truth.csv").open() as fh:
        truth = {
            (int(r["x"]), int(r["y"]), int(r["z"])): (r["label"], r["type"])
            for r in csv.DictReader(fh)
        }
    with serve(TOKEN) as fake:
        fake.add_dataset(DATASET_ID, dataset, name=NAME)
        # the server refuses the third task it is asked to create
        fake.refuse_task(creation=3, reason=REFUSAL)
        env, secret = pg_redis_env(
            pg_url,
            tmp_path / "data",
            broker=redis_url,
            ARTIFACT_LOOP_WK_URL=fake.url,
            ARTIFACT_LOOP_WK_TOKEN=TOKEN,
            ARTIFACT_LOOP_WK_SYNC_EVERY_S="0",
            ARTIFACT_LOOP_RETRAIN_EVERY="10",
            ARTIFACT_LOOP_BATCH_SIZE="20",
        )
        with (
            api_server(env, log=tmp_path / "api.log") as base,
            celery_worker(env, queues="gpu,io", name="wk", log=tmp_path / "worker.log"),
        ):
            http = admin_api(base, secret)
            r = http.post("/datasets", json={"name": NAME, "path": str(dataset)})
            assert r.status_code == 201, r.text
            ds = r.json()["id"]
            voxel = r.json()["voxel_size"]

            # not linked yet: the sync is refused before it reaches a worker
            refused = http.post(f"/datasets/{ds}/jobs", json={"kind": "sync"})
            assert refused.status_code == 422 and "not linked" in refused.json()["detail"]
            # a server dataset id is 24 hex digits
            bad = http.put(f"/datasets/{ds}/webknossos", json={"dataset_id": "wk-ds-1"})
            assert bad.status_code == 422 and "dataset_id" in bad.text
            # the admin knows the name; the id is looked up on the server
            link = http.put(f"/datasets/{ds}/webknossos", json={"dataset_name": NAME, "push": True})
            assert link.status_code == 200, link.text
            assert link.json()["link"]["dataset_id"] == DATASET_ID
            assert TOKEN not in link.text

            # the cold-start proposals are pushed by themselves once they exist; the refused
            # one fails that sync with the server's reason, the others are on the server
            failed = wait_for(
                lambda: [j for j in _jobs(http, ds, "sync") if j["state"] == "failed"],
                "the first push (with one task refused)",
            )[0]
            assert REFUSAL in failed["error"] and "refused 1 task" in failed["error"]
            assert len(fake.tasks()) == 19
            # offered again by the next sync (the server accepts it this time)
            again = _run_sync(http, ds)
            assert again["state"] == "succeeded", again["error"]
            assert again["result"]["pushed"] == 1 and again["result"]["refused"] == []
            tasks = fake.tasks()
            assert len(tasks) == 20
            assert {t["datasetId"] for t in tasks} == {DATASET_ID}
            bbox = tasks[0]["boundingBox"]
            assert (bbox["width"], bbox["height"], bbox["depth"]) == (140 + 140, 140 + 140, 1)
            assert sum(1 for r in fake.state.requests if r == "POST /taskTypes") == 1
            # project created once, its name made of what the server allows
            assert sum(1 for r in fake.state.requests if r == "POST /projects") == 1
            assert [p["name"] for p in fake.state.projects.values()] == [PROJECT]
            # nobody holds the tasks' experience yet: the sync says so
            assert again["result"]["unassignable"] == 20
            assert "Change Experience" in again["result"]["warnings"][0]
            fake.grant_experience(ANNOTATOR_ID, "artifact-loop")

            # two patches are answered in the web page instead: nobody has started the first
            # in webKnossos, an annotator is working on the second
            by_patch = {}
            for task in tasks:
                top = task["boundingBox"]["topLeft"]
                by_patch[(top[0] + 70, top[1] + 70, top[2])] = task["id"]
            open_tasks = http.get(
                f"/datasets/{ds}/tasks", params={"status": "open", "limit": 100}
            ).json()["items"]
            untouched, busy = open_tasks[0], open_tasks[1]
            untouched_task = by_patch[(untouched["x"], untouched["y"], untouched["z"])]
            busy_task = by_patch[(busy["x"], busy["y"], busy["z"])]
            in_progress = fake.start(busy_task)
            for task in (untouched, busy):
                answer = http.post(f"/tasks/{task['id']}/label", json={"label": "clean"})
                assert answer.status_code == 200, answer.text

            # annotators finish 15 tasks in webKnossos (not the ones answered elsewhere)
            finished = {}
            for patch, task_id in by_patch.items():
                if task_id in (untouched_task, busy_task) or len(finished) == 15:
                    continue
                label, kind = truth[patch]
                name = f"artifact:{kind}" if label == "artifact" else "clean"
                data = _nml(NAME, voxel, (*patch, 140, 140), name)
                finished[fake.finish(task_id, filename="annotation.nml", data=data)] = label

            first = _run_sync(http, ds)
            assert first["state"] == "succeeded", first["error"]
            assert first["result"]["annotations_imported"] == 15
            assert first["result"]["labels_added"] == 15
            assert first["result"]["unassignable"] == 0
            # the untouched task is deleted; the one with work in progress is not
            assert first["result"]["cancelled"] == 1
            assert first["result"]["kept_in_progress"] == 1
            remaining = {t["id"] for t in fake.tasks()}
            assert untouched_task not in remaining and busy_task in remaining
            assert in_progress in {a.id for a in fake.annotations()}

            labels = http.get(f"/datasets/{ds}/labels", params={"limit": 1000}).json()["items"]
            from_wk = [lab for lab in labels if lab["source"] == "webknossos"]
            assert len(from_wk) == 15
            assert sorted(lab["label"] for lab in from_wk) == sorted(finished.values())

            # again, and after an annotator re-saved one: nothing counts twice
            fake.touch(next(iter(finished)))
            again = _run_sync(http, ds)
            assert again["state"] == "succeeded", again["error"]
            assert again["result"]["labels_added"] == 0
            # (a sync the loop started after the retraining may have re-read it first)
            assert again["result"]["annotations_unchanged"] >= 14
            status = http.get(f"/datasets/{ds}/webknossos").json()
            assert status["annotations_imported"] == 15 and status["labels_from_annotations"] == 15

            # the new labels started a retraining by themselves
            trains = wait_for(lambda: _jobs(http, ds, "train"), "a retraining")
            assert trains[0]["requested_by"] == "loop"

            # a prediction lands on the server next to the EM
            wait_for(
                lambda: http.get(f"/jobs/{trains[0]['id']}").json()["state"] == "succeeded",
                "the retraining",
            )
            job = http.post(f"/datasets/{ds}/jobs", json={"kind": "predict"}).json()["job"]
            predicted = wait_for(
                lambda: (
                    (j := http.get(f"/jobs/{job['id']}").json())["state"] in ("succeeded", "failed")
                    and j
                ),
                "the prediction",
            )
            assert predicted["state"] == "succeeded", predicted["error"]
            published = predicted["result"]["webknossos"]
            assert fake.dataset(published["dataset_id"]).linked == {"color": (DATASET_ID, "color")}
            with wk.webknossos_context(url=fake.url, token=TOKEN):
                remote = wk.RemoteDataset.open(dataset_id=published["dataset_id"])
                assert set(remote.layers) == {
                    "color",
                    "artifact_prob",
                    "artifact_mask",
                    "artifact_uncertainty",
                }
            nml = wk.Annotation.load(Path(predicted["result"]["nml"]))
            assert (nml.dataset_name, nml.dataset_id) == (remote.name, remote.dataset_id)
            assert [s["z"] for s in predicted["result"]["sections"]] == list(range(6))

            # an annotation shared by id that is not an NML: a failed job with its reason
            broken = fake.add_annotation(filename="broken.nml", data=b"<things><oops")
            bad_sync = _run_sync(http, ds, {"annotations": [broken]})
            assert bad_sync["state"] == "failed"
            assert broken in bad_sync["error"]

    # the server went away: the sync fails and says so
    gone = _unreachable_sync(pg_url, tmp_path, env, secret, ds)
    assert gone["state"] == "failed" and "unreachable" in gone["error"]


def _unreachable_sync(pg_url: str, tmp_path: Path, env: dict, secret: str, ds: int) -> dict:
    with (
        api_server(env, log=tmp_path / "api2.log") as base,
        celery_worker(env, queues="gpu,io", name="wk2", log=tmp_path / "worker2.log"),
    ):
        http = admin_api(base, secret)
        return _run_sync(http, ds)


def test_wrong_token_and_unreachable_server_are_clear_errors(tmp_path: Path) -> None:
    from server.errors import ServiceUnavailable
    from server.settings import Settings
    from server.webknossos.sync import WebknossosError
    from server.webknossos.sync import server as wk_server

    with serve(TOKEN) as fake:
        wrong = Settings(data_dir=tmp_path, wk_url=fake.url, wk_token="not-the-token")
        with pytest.raises(WebknossosError, match="refused the token"), wk_server(wrong):
            wk.Team.get_list()
        url = fake.url
    gone = Settings(data_dir=tmp_path, wk_url=url, wk_token=TOKEN)
    with pytest.raises(ServiceUnavailable, match="unreachable"), wk_server(gone):
        wk.Team.get_list()


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("5f3a9c0e1d2b3c4d5e6f7a8b", "5f3a9c0e1d2b3c4d5e6f7a8b"),
        ("https://wk.example.org/annotations/5f3a9c0e1d2b3c4d5e6f7a8b", "5f3a9c0e1d2b3c4d5e6f7a8b"),
        (
            "https://wk.example.org/annotations/5f3a9c0e1d2b3c4d5e6f7a8b#2000,3000,15",
            "5f3a9c0e1d2b3c4d5e6f7a8b",
        ),
    ],
)
def test_annotations_are_given_by_id_or_url(ref: str, expected: str) -> None:
    from server.webknossos.sync import _annotation_ref

    assert _annotation_ref(ref) == expected


@pytest.mark.parametrize("ref", ["", "not an id!", "https://wk.example.org/annotations/"])
def test_malformed_annotation_references_are_refused(ref: str) -> None:
    from server.errors import InvalidInput
    from server.webknossos.sync import _annotation_ref

    with pytest.raises(InvalidInput):
        _annotation_ref(ref)
