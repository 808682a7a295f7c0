"""Suspect labels: the list with the model's view, and the re-label task a batch makes of a
suspect, offered to another annotator and never to the one who gave the label."""

from __future__ import annotations

from typing import Any

from server.acquisition.relabel import mix_relabels
from server.annotation.proposals import replace_proposals
from server.annotation.relabel import relabel_candidates
from server.datasets.service import get_dataset, grid_of
from server.db.base import session_scope
from server.db.tables import LabelSuspect, ModelVersion
from tests.api.conftest import Api

V1 = "/api/v1"


def _label(api: Api, dataset_id: int, x: int, verdict: str) -> int:
    r = api.client.post(
        f"{V1}/datasets/{dataset_id}/labels",
        json={"x": x, "y": 0, "z": 0, "label": verdict},
        headers=api.annotator,
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _suspects(api: Api, dataset_id: int, **params: Any) -> dict[str, Any]:
    r = api.client.get(
        f"{V1}/datasets/{dataset_id}/suspect-labels", params=params, headers=api.admin
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_suspect_labels_list_the_models_view_and_the_relabel_task(
    api: Api, dataset_id: int
) -> None:
    assert _suspects(api, dataset_id) == {"items": [], "total": 0, "limit": 50, "offset": 0}
    strong = _label(api, dataset_id, 0, "clean")
    weak = _label(api, dataset_id, 140, "artifact")
    _label(api, dataset_id, 280, "clean")  # not suspect
    with session_scope(api.sessions()) as session:
        version = ModelVersion(dataset_id=dataset_id, kind="classifier", status="ready")
        session.add(version)
        session.flush()
        session.add_all(
            [
                LabelSuspect(dataset_id=dataset_id, label_id=strong, model_version_id=version.id,
                             p_artifact=0.97, p_given=0.04, score=0.96),
                LabelSuspect(dataset_id=dataset_id, label_id=weak, model_version_id=version.id,
                             p_artifact=0.2, p_given=0.3, score=0.7),
            ]
        )  # fmt: skip
        version_id = version.id
    page = _suspects(api, dataset_id)
    assert page["total"] == 2 and [s["label_id"] for s in page["items"]] == [strong, weak]
    first = page["items"][0]
    assert first["position"] == {"x": 0, "y": 0, "z": 0, "w": 140, "h": 140}
    assert first["annotator"] == "bob" and first["label"] == "clean"
    assert first["p_artifact"] == 0.97 and first["p_given"] == 0.04 and first["score"] == 0.96
    assert first["model_version_id"] == version_id and first["relabel_task"] is None
    second_page = _suspects(api, dataset_id, limit=1, offset=1)
    assert [s["label_id"] for s in second_page["items"]] == [weak] and second_page["total"] == 2

    # the next batch: new patches of a strategy, the suspects competing for places
    with session_scope(api.sessions()) as session:
        dataset = get_dataset(session, dataset_id)
        grid = grid_of(dataset)
        suspects = relabel_candidates(session, dataset=dataset, grid=grid)
        assert [s.label_id for s in suspects] == [strong, weak]
        new = [{"index": i, "reason": "uncertain", "score": 1.2 - i / 10} for i in range(3, 13)]
        picks = mix_relabels(new, suspects, batch_size=10)
        # worth 0.96 x 0.9 and 0.7 x 0.9: each before the first new patch worth less
        assert [p["reason"] for p in picks][:2] == ["uncertain", "relabel"]
        assert [p["reason"] for p in picks][3:5] == ["uncertain", "relabel"]
        replace_proposals(
            session, dataset=dataset, grid=grid, model_version_id=version_id, job_id=None,
            picks=picks,
        )  # fmt: skip
    items = _suspects(api, dataset_id)["items"]
    task = items[0]["relabel_task"]
    assert task is not None and task["status"] == "open" and task["label"] is None
    assert items[1]["relabel_task"] is not None

    # bob gave the label: he is never offered it; carol is, and her verdict shows
    offered = []
    while (
        r := api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=api.annotator)
    ).json()["task"]:
        offered.append(r.json()["task"]["id"])
        api.client.post(f"{V1}/tasks/{offered[-1]}/skip", headers=api.annotator)
    assert task["id"] not in offered and offered
    carol = api.token("carol")
    for _ in range(20):
        handed = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=carol)
        got = handed.json()["task"]
        assert got is not None
        if got["id"] == task["id"]:
            break
        api.client.post(f"{V1}/tasks/{got['id']}/skip", headers=carol)
    r = api.client.post(f"{V1}/tasks/{task['id']}/label", json={"label": "artifact"}, headers=carol)
    assert r.status_code == 200, r.text
    done = _suspects(api, dataset_id)["items"][0]["relabel_task"]
    assert done == {"id": task["id"], "status": "labelled", "label": "artifact",
                    "annotator": "carol"}  # fmt: skip
    # a position labelled by two annotators is offered no more
    with session_scope(api.sessions()) as session:
        dataset = get_dataset(session, dataset_id)
        again = relabel_candidates(session, dataset=dataset, grid=grid_of(dataset))
        assert [s.label_id for s in again] == [weak]


def test_suspect_labels_of_an_unknown_dataset_are_404(api: Api) -> None:
    r = api.client.get(f"{V1}/datasets/999/suspect-labels", headers=api.admin)
    assert r.status_code == 404 and "999" in r.json()["detail"]
