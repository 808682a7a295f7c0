"""PUT /annotators/{name}/weight: an admin down-weights or excludes an annotator's labels,
training follows; GET /datasets/{id}/consensus shows what each position's verdict rests on."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from server.datasets.service import get_dataset
from server.db.base import session_scope
from server.db.tables import Job, ModelVersion
from server.labels.training_set import training_set
from tests.api.conftest import Api

# bob and cat agree everywhere; dan agrees except at (0, 0), where he labels last
VERDICTS = {
    (0, 0): ("artifact", "artifact", "clean"),
    (140, 0): ("clean", "clean", "clean"),
    (280, 0): ("artifact", "artifact", "artifact"),
}


def _label_three(api: Api, dataset_id: int) -> dict[str, dict[str, str]]:
    people = {"bob": api.annotator, "cat": api.token("cat"), "dan": api.token("dan")}
    for (x, y), said in VERDICTS.items():
        for name, label in zip(people, said, strict=True):
            r = api.client.post(
                f"/api/v1/datasets/{dataset_id}/labels",
                json={"x": x, "y": y, "z": 0, "label": label},
                headers=people[name],
            )
            assert r.status_code == 201, r.text
    # dan alone labels one more patch
    r = api.client.post(
        f"/api/v1/datasets/{dataset_id}/labels",
        json={"x": 420, "y": 0, "z": 0, "label": "artifact"},
        headers=people["dan"],
    )
    assert r.status_code == 201, r.text
    return people


def _with_autoencoder(api: Api, dataset_id: int) -> None:
    with session_scope(api.sessions()) as session:
        session.add(ModelVersion(dataset_id=dataset_id, kind="ae", status="ready", active=True))


def _trainings(api: Api, dataset_id: int) -> list[Job]:
    with session_scope(api.sessions()) as session:
        jobs = session.scalars(
            select(Job).where(Job.dataset_id == dataset_id, Job.kind == "train").order_by(Job.id)
        )
        return [j for j in jobs if "label weight" in str((j.params or {}).get("trigger"))]


def _training_positions(api: Api, dataset_id: int) -> dict[tuple[int, int], Any]:
    with session_scope(api.sessions()) as session:
        chosen = training_set(session, dataset=get_dataset(session, dataset_id))
        return {
            (lab.x, lab.y): (lab.label, lab.annotator, w)
            for lab, w in zip(chosen.labels, chosen.weights, strict=True)
        }


def _put(api: Api, name: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    return api.client.put(f"/api/v1/annotators/{name}/weight", json=body, headers=headers)


def test_only_an_admin_sets_a_weight_within_0_and_1_for_a_known_name(
    api: Api, dataset_id: int
) -> None:
    _label_three(api, dataset_id)
    r = _put(api, "dan", {"weight": 0.0}, api.annotator)
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert _put(api, "dan", {"weight": 0.0}, {}).status_code == 401
    r = _put(api, "nobody", {"weight": 0.5}, api.admin)
    assert r.status_code == 404 and "nobody" in r.json()["detail"]
    for bad in (-0.1, 1.5, "much"):
        assert _put(api, "dan", {"weight": bad}, api.admin).status_code == 422, bad
    assert _put(api, "dan", {}, api.admin).status_code == 422
    report = api.client.get(f"/api/v1/datasets/{dataset_id}/annotators", headers=api.admin)
    rows = {a["annotator"]: a for a in report.json()["annotators"]}
    assert {name: row["label_weight"] for name, row in rows.items()} == {
        "bob": 1.0, "cat": 1.0, "dan": 1.0,
    }  # fmt: skip


def test_excluding_an_annotator_queues_training_and_drops_their_labels_from_it(
    api: Api, dataset_id: int
) -> None:
    _label_three(api, dataset_id)
    _with_autoencoder(api, dataset_id)
    before = _training_positions(api, dataset_id)
    assert before[(0, 0)][0] == "artifact", "two against one"
    assert before[(420, 0)] == ("artifact", "dan", 1.0)

    r = _put(api, "dan", {"weight": 0, "reason": "flips labels"}, api.admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["annotator"], body["weight"], body["reason"]) == ("dan", 0.0, "flips labels")
    (queued,) = _trainings(api, dataset_id)
    assert body["trainings"] == [queued.id] and queued.state == "queued"
    assert queued.requested_by == "ada"

    after = _training_positions(api, dataset_id)
    assert (420, 0) not in after, "a patch only dan labelled leaves the training set"
    assert set(after) == {(0, 0), (140, 0), (280, 0)}
    assert all(annotator != "dan" for _, annotator, _ in after.values())
    # the labels stay stored, and the report still measures dan
    report = api.client.get(f"/api/v1/datasets/{dataset_id}/annotators", headers=api.annotator)
    rows = {a["annotator"]: a for a in report.json()["annotators"]}
    assert rows["dan"]["labels"] == 4 and rows["dan"]["label_weight"] == 0.0
    assert rows["dan"]["label_weight_reason"] == "flips labels"

    # the same weight again changes nothing and queues nothing more
    r = _put(api, "dan", {"weight": 0, "reason": "flips labels"}, api.admin)
    assert r.status_code == 200 and r.json()["trainings"] == []
    # included again at half weight: a changed weight, the waiting training takes it in
    r = _put(api, "dan", {"weight": 0.5, "reason": None}, api.admin)
    assert r.json()["trainings"] == [queued.id]
    assert _training_positions(api, dataset_id)[(420, 0)] == ("artifact", "dan", 0.5)


def test_the_consensus_list_shows_each_verdict_and_whether_it_counts(
    api: Api, dataset_id: int
) -> None:
    _label_three(api, dataset_id)
    assert _put(api, "dan", {"weight": 0}, api.admin).status_code == 200
    r = api.client.get(
        f"/api/v1/datasets/{dataset_id}/consensus", params={"limit": 2}, headers=api.annotator
    )
    assert r.status_code == 200, r.text
    page = r.json()
    assert (page["total"], page["limit"], len(page["items"])) == (3, 2, 2)
    first = page["items"][0]
    assert (first["x"], first["y"], first["audit"], first["verdict"]) == (0, 0, False, "artifact")
    assert first["aggregation"] == "consensus" and first["p_artifact"] > 0.5
    assert 0 < first["training_weight"] <= 1
    verdicts = {
        v["annotator"]: (v["label"], v["annotator_weight"], v["counted"]) for v in first["labels"]
    }
    assert verdicts == {
        "bob": ("artifact", 1.0, True),
        "cat": ("artifact", 1.0, True),
        "dan": ("clean", 0.0, False),
    }
    r = api.client.get("/api/v1/datasets/999/consensus", headers=api.annotator)
    assert r.status_code == 404


def test_the_label_aggregation_setting_switches_training_to_the_latest_label(
    api: Api, dataset_id: int
) -> None:
    _label_three(api, dataset_id)
    url = f"/api/v1/datasets/{dataset_id}/label-aggregation"
    assert api.client.get(url, headers=api.annotator).json() == {"label_aggregation": "consensus"}
    r = api.client.put(url, json={"label_aggregation": "latest"}, headers=api.annotator)
    assert r.status_code == 403
    r = api.client.put(url, json={"label_aggregation": "majority"}, headers=api.admin)
    assert r.status_code == 422 and "consensus or latest" in r.json()["detail"]
    r = api.client.put(url, json={"label_aggregation": "latest"}, headers=api.admin)
    assert r.status_code == 200 and r.json() == {"label_aggregation": "latest"}
    assert _training_positions(api, dataset_id)[(0, 0)] == ("clean", "dan", 1.0), "dan's, last"
