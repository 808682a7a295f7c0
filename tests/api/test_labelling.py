"""Skip, unsure, taking a skip back, changing a verdict and progress, over the REST API."""

from __future__ import annotations

from tests.api.conftest import Api, add_tasks

V1 = "/api/v1"


def test_skip_unskip_and_the_review_list(api: Api, dataset_id: int) -> None:
    add_tasks(api, dataset_id, 3)
    carol = api.token("carol")
    first = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=api.annotator)
    task = first.json()["task"]
    assert task["webknossos_url"] is None, "no webKnossos server configured"
    r = api.client.post(
        f"{V1}/tasks/{task['id']}/skip", json={"unsure": True}, headers=api.annotator
    )
    assert r.status_code == 200 and r.json()["status"] == "open"
    review = api.client.get(f"{V1}/datasets/{dataset_id}/tasks/review", headers=carol).json()
    assert [(t["id"], t["unsure_flags"]) for t in review["items"]] == [(task["id"], 1)]

    # bob gets the next one, never the skipped one; carol gets the skipped one first
    again = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=api.annotator)
    assert again.json()["task"]["id"] != task["id"]
    theirs = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=carol).json()
    assert theirs["task"]["id"] == task["id"]
    # taking the skip back is refused while carol holds it, with a message, not a 500
    refused = api.client.post(f"{V1}/tasks/{task['id']}/unskip", headers=api.annotator)
    assert refused.status_code == 409 and "someone else" in refused.json()["detail"]
    api.client.post(f"{V1}/tasks/{task['id']}/release", headers=carol)
    back = api.client.post(f"{V1}/tasks/{task['id']}/unskip", headers=api.annotator)
    assert back.status_code == 200 and back.json()["status"] == "leased"
    twice = api.client.post(f"{V1}/tasks/{task['id']}/unskip", headers=api.annotator)
    assert twice.status_code == 409 and "did not skip" in twice.json()["detail"]


def test_change_a_verdict_and_progress(api: Api, dataset_id: int) -> None:
    add_tasks(api, dataset_id, 2)
    task = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=api.annotator).json()[
        "task"
    ]
    label = api.client.post(
        f"{V1}/tasks/{task['id']}/label", json={"label": "clean"}, headers=api.annotator
    ).json()
    carol = api.token("carol")
    body = {"label": "artifact", "artifact_type": "debris"}
    not_hers = api.client.put(f"{V1}/labels/{label['id']}", json=body, headers=carol)
    assert not_hers.status_code == 409 and "not yours" in not_hers.json()["detail"]
    bad = api.client.put(
        f"{V1}/labels/{label['id']}",
        json={"label": "clean", "artifact_type": "debris"},
        headers=api.annotator,
    )
    assert bad.status_code == 422
    changed = api.client.put(f"{V1}/labels/{label['id']}", json=body, headers=api.annotator)
    assert changed.status_code == 200, changed.text
    new = changed.json()
    assert (new["label"], new["artifact_type"], new["task_id"]) == (
        "artifact",
        "debris",
        task["id"],
    )
    assert (new["x"], new["y"], new["z"], new["annotator"]) == (
        task["x"],
        task["y"],
        task["z"],
        "bob",
    )
    assert new["id"] != label["id"]
    labels = api.client.get(f"{V1}/datasets/{dataset_id}/labels", headers=api.admin).json()
    assert [(lab["id"], lab["label"]) for lab in labels["items"]] == [(new["id"], "artifact")]
    gone = api.client.put(f"{V1}/labels/{label['id']}", json=body, headers=api.annotator)
    assert gone.status_code == 404

    progress = api.client.get(f"{V1}/datasets/{dataset_id}/progress", headers=api.annotator)
    p = progress.json()
    assert p["labels_total"] == 1 and p["my_labels_last_hour"] == 1 and p["remaining"] == 1
    assert p["labels_until_training"] == p["retrain_every"] - 1 and p["training"] is None
    missing = api.client.get(f"{V1}/datasets/999/progress", headers=api.annotator)
    assert missing.status_code == 404 and "detail" in missing.json()


def test_a_proposal_of_a_replaced_batch_given_back_waits_behind_the_new_batch(
    api: Api, dataset_id: int
) -> None:
    from server.annotation.proposals import demote_superseded, replace_proposals
    from server.datasets.service import get_dataset, grid_of
    from server.db.base import write_transaction

    add_tasks(api, dataset_id, 4)
    next_url = f"{V1}/datasets/{dataset_id}/tasks/next"
    held = api.client.post(next_url, headers=api.annotator).json()["task"]
    skipped = api.client.post(next_url, headers=api.annotator).json()["task"]
    with write_transaction(api.sessions()) as session:
        dataset = get_dataset(session, dataset_id)
        batch = replace_proposals(
            session,
            dataset=dataset,
            grid=grid_of(dataset),
            model_version_id=None,
            job_id=None,
            picks=[{"index": i, "reason": "uncertain", "score": 1.0} for i in (10, 11, 12)],
        )
    # given back between the replacement's commit and the demotion: open at its old rank
    api.client.post(f"{V1}/tasks/{skipped['id']}/skip", headers=api.annotator)
    with write_transaction(api.sessions()) as session:
        moved = demote_superseded(session, dataset_id=dataset_id, first_new_id=batch.first_new_id)
    assert batch.added == 3 and moved == 2, "the held and the skipped proposal"
    released = api.client.post(f"{V1}/tasks/{held['id']}/release", headers=api.annotator)
    assert released.json()["status"] == "open"

    carol = api.token("carol")
    offered = []
    for _ in range(5):  # each labelled: beyond three leases the oldest would be given back
        offered.append(api.client.post(next_url, headers=carol).json()["task"])
        label = {"label": "clean"}
        api.client.post(f"{V1}/tasks/{offered[-1]['id']}/label", json=label, headers=carol)
    assert [t["grid_index"] for t in offered[:3]] == [10, 11, 12]
    assert {t["id"] for t in offered[3:]} == {held["id"], skipped["id"]}
