"""The review list resolves; unsure patches stay in the loop; audit tasks look like any other;
audit labels start a measurement; unpin re-scores; jobs answer 304 when unchanged."""

from __future__ import annotations

from sqlalchemy import select

from server.annotation.proposals import replace_proposals
from server.datasets.service import get_dataset, grid_of
from server.db.base import session_scope
from server.db.tables import AnnotationTask, Job, ModelVersion
from tests.api.conftest import Api, add_tasks

V1 = "/api/v1"


def _new_batch(api: Api, dataset_id: int, indices: list[int]) -> None:
    with session_scope(api.sessions()) as session:
        dataset = get_dataset(session, dataset_id)
        replace_proposals(
            session, dataset=dataset, grid=grid_of(dataset), model_version_id=None, job_id=None,
            picks=[{"index": i, "reason": "uncertain"} for i in indices],
        )  # fmt: skip


def _status(api: Api, task_id: int) -> str:
    with session_scope(api.sessions()) as session:
        task = session.get(AnnotationTask, task_id)
        assert task is not None
        return task.status


def test_an_unsure_patch_stays_until_resolved_and_the_list_says_who_and_when(
    api: Api, dataset_id: int
) -> None:
    unsure_id, plain_id = add_tasks(api, dataset_id, 2)  # grid patches 0 and 1
    carol = api.token("carol")
    for task_id, headers in ((unsure_id, api.annotator), (unsure_id, carol)):
        r = api.client.post(f"{V1}/tasks/{task_id}/skip", json={"unsure": True}, headers=headers)
        assert r.status_code == 200, r.text
    api.client.post(f"{V1}/tasks/{plain_id}/skip", json={"unsure": False}, headers=api.annotator)

    # a new batch retires the open proposals, but not the one flagged unsure
    _new_batch(api, dataset_id, [10, 11, 0])  # 0: the unsure patch proposed again
    assert _status(api, unsure_id) == "open" and _status(api, plain_id) == "retired"
    with session_scope(api.sessions()) as session:
        same = session.scalars(
            select(AnnotationTask).where(
                AnnotationTask.dataset_id == dataset_id, AnnotationTask.status == "open"
            )
        ).all()
        assert len({(t.x, t.y, t.z) for t in same}) == len(same), "no patch offered twice"

    review = api.client.get(f"{V1}/datasets/{dataset_id}/tasks/review", headers=carol).json()
    (item,) = review["items"]
    assert item["id"] == unsure_id and item["unsure_flags"] == 2
    assert [f["annotator"] for f in item["flagged_by"]] == ["bob", "carol"]
    assert all(f["at"] for f in item["flagged_by"]) and item["resolved_at"] is None

    # the second look: an annotator may not resolve; the admin labels it, then resolves it
    refused = api.client.post(f"{V1}/tasks/{unsure_id}/resolve", headers=api.annotator)
    assert refused.status_code == 403
    r = api.client.post(f"{V1}/tasks/{unsure_id}/label", json={"label": "clean"}, headers=api.admin)
    assert r.status_code == 200, r.text
    r = api.client.post(f"{V1}/tasks/{unsure_id}/resolve", headers=api.admin)
    assert r.status_code == 200, r.text
    (item,) = api.client.get(f"{V1}/datasets/{dataset_id}/tasks/review", headers=carol).json()[
        "items"
    ]
    assert item["resolved_by"] == "ada" and item["resolved_at"]
    assert [(x["annotator"], x["label"]) for x in item["labels"]] == [("ada", "clean")]
    missing = api.client.post(f"{V1}/tasks/999999/resolve", headers=api.admin)
    assert missing.status_code == 404 and "999999" in missing.json()["detail"]


def test_a_resolved_unlabelled_patch_leaves_with_the_next_batch(api: Api, dataset_id: int) -> None:
    (task_id,) = add_tasks(api, dataset_id, 1)
    api.client.post(f"{V1}/tasks/{task_id}/skip", json={"unsure": True}, headers=api.annotator)
    r = api.client.post(f"{V1}/tasks/{task_id}/resolve", json={"resolved": True}, headers=api.admin)
    assert r.status_code == 200, r.text
    _new_batch(api, dataset_id, [5])
    assert _status(api, task_id) == "retired"


def test_audit_tasks_look_like_every_other_task_to_annotators(api: Api, dataset_id: int) -> None:
    (task_id,) = add_tasks(api, dataset_id, 1)
    with session_scope(api.sessions()) as session:
        task = session.get(AnnotationTask, task_id)
        assert task is not None
        task.kind, task.reason = "audit", "audit"
    handed = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=api.annotator)
    task = handed.json()["task"]
    assert task["id"] == task_id and task["kind"] == "proposal" and task["reason"] == "random"
    one = api.client.get(f"{V1}/tasks/{task_id}", headers=api.annotator).json()
    assert "audit" not in (one["kind"], one["reason"])
    assert api.client.get(f"{V1}/tasks/{task_id}", headers=api.admin).json()["kind"] == "audit"
    # nor does the task list tell annotators which ones are graded
    listed = api.client.get(f"{V1}/datasets/{dataset_id}/tasks", headers=api.annotator).json()
    (item,) = listed["items"]
    assert item["kind"] == "proposal" and item["reason"] == "random" and item["rank"] is None
    by_kind = api.client.get(
        f"{V1}/datasets/{dataset_id}/tasks", params={"kind": "audit"}, headers=api.annotator
    )
    assert by_kind.status_code == 403 and "only admins" in by_kind.json()["detail"]
    as_admin = api.client.get(
        f"{V1}/datasets/{dataset_id}/tasks", params={"kind": "audit"}, headers=api.admin
    ).json()
    assert [t["id"] for t in as_admin["items"]] == [task_id]


def _ready_classifier(api: Api, dataset_id: int) -> int:
    with session_scope(api.sessions()) as session:
        version = ModelVersion(
            dataset_id=dataset_id, kind="classifier", status="ready", metrics={},
            weights_path="/nowhere/classifier.pt",
        )  # fmt: skip
        session.add(version)
        session.flush()
        return version.id


def _jobs(api: Api, dataset_id: int, kind: str) -> list[Job]:
    with session_scope(api.sessions()) as session:
        found = list(
            session.scalars(select(Job).where(Job.dataset_id == dataset_id, Job.kind == kind))
        )
        session.expunge_all()
        return found


def test_audit_labels_start_one_measurement_of_the_versions(api: Api, dataset_id: int) -> None:
    tasks = add_tasks(api, dataset_id, 3)
    with session_scope(api.sessions()) as session:
        for task in session.scalars(select(AnnotationTask).where(AnnotationTask.id.in_(tasks))):
            task.kind = "audit"
    r = api.client.post(f"{V1}/tasks/{tasks[0]}/label", json={"label": "clean"}, headers=api.admin)
    assert r.status_code == 200 and _jobs(api, dataset_id, "audit") == [], "no classifier yet"
    _ready_classifier(api, dataset_id)
    for task_id in tasks[1:]:
        r = api.client.post(
            f"{V1}/tasks/{task_id}/label", json={"label": "clean"}, headers=api.admin
        )
        assert r.status_code == 200, r.text
    (job,) = _jobs(api, dataset_id, "audit")  # the second label joined the waiting one
    assert job.state == "queued" and job.params == {"trigger": "audit labels arrived"}


def test_unpin_scores_the_pool_with_the_version_that_becomes_active(
    api: Api, dataset_id: int
) -> None:
    older = _ready_classifier(api, dataset_id)
    newer = _ready_classifier(api, dataset_id)
    r = api.client.post(f"{V1}/models/{older}/activate", headers=api.admin)
    assert r.status_code == 200, r.text
    r = api.client.post(f"{V1}/datasets/{dataset_id}/models/unpin", headers=api.admin)
    assert r.status_code == 200 and r.json()["id"] == newer
    scored = [j.params["model_version_id"] for j in _jobs(api, dataset_id, "score")]
    assert scored == [older, newer]


def test_jobs_answer_304_while_nothing_changed(api: Api, dataset_id: int) -> None:
    path = f"{V1}/jobs?dataset_id={dataset_id}&limit=12"
    first = api.client.get(path, headers=api.admin)
    tag = first.headers["etag"]
    assert first.status_code == 200 and tag
    again = api.client.get(path, headers={**api.admin, "If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    r = api.client.post(
        f"{V1}/datasets/{dataset_id}/jobs", json={"kind": "pretrain"}, headers=api.admin
    )
    assert r.status_code == 202, r.text
    changed = api.client.get(path, headers={**api.admin, "If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag
    assert changed.json()["total"] == 1
