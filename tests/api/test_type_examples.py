"""The type guide shows confirmed examples only: agreed by two annotators, or reviewed."""

from __future__ import annotations

from tests.api.conftest import Api, add_tasks

V1 = "/api/v1"


def _label(api: Api, dataset_id: int, headers: dict[str, str], x: int, kind: str) -> None:
    body = {"x": x, "y": 0, "z": 0, "label": "artifact", "artifact_type": kind}
    r = api.client.post(f"{V1}/datasets/{dataset_id}/labels", json=body, headers=headers)
    assert r.status_code == 201, r.text


def test_only_agreed_or_reviewed_labels_are_examples(api: Api, dataset_id: int) -> None:
    carol, dave = api.token("carol"), api.token("dave")
    path = f"{V1}/datasets/{dataset_id}/type-examples?artifact_type=fold"
    _label(api, dataset_id, api.annotator, 0, "fold")  # one annotator alone
    _label(api, dataset_id, api.annotator, 140, "fold")  # two agree
    _label(api, dataset_id, carol, 140, "fold")
    _label(api, dataset_id, api.annotator, 280, "fold")  # two, but a third disagrees
    _label(api, dataset_id, carol, 280, "fold")
    _label(api, dataset_id, dave, 280, "scratch")
    assert [e["x"] for e in api.client.get(path, headers=dave).json()] == [140]
    _label(api, dataset_id, api.admin, 420, "fold")  # an admin's is reviewed
    assert [e["x"] for e in api.client.get(path, headers=dave).json()] == [420, 140]

    # a patch resolved on the review list counts as reviewed
    (task_id,) = add_tasks(api, dataset_id, 1)
    r = api.client.post(
        f"{V1}/tasks/{task_id}/label",
        json={"label": "artifact", "artifact_type": "scratch"},
        headers=carol,
    )
    assert r.status_code == 200, r.text
    scratch = f"{V1}/datasets/{dataset_id}/type-examples?artifact_type=scratch"
    assert api.client.get(scratch, headers=dave).json() == []
    assert api.client.post(f"{V1}/tasks/{task_id}/resolve", headers=api.admin).status_code == 200
    assert len(api.client.get(scratch, headers=dave).json()) == 1

    bad = api.client.get(f"{V1}/datasets/{dataset_id}/type-examples?artifact_type=x", headers=dave)
    assert bad.status_code == 422 and "artifact_type must be one of" in bad.json()["detail"]
