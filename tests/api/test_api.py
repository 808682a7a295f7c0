"""The REST API on SQLite and PostgreSQL: resources, auth, leases and bad input."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from server.db.base import session_scope, utcnow
from server.db.tables import AnnotationTask, Label, ModelVersion
from tests.api.conftest import Api, add_tasks

V1 = "/api/v1"


def test_health_ready_and_me(api: Api) -> None:
    assert api.client.get(f"{V1}/health").json() == {"status": "ok"}
    ready = api.client.get(f"{V1}/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["database"] == "ok" and ready.json()["broker"] == "ok"
    me = api.client.get(f"{V1}/me", headers=api.annotator).json()
    assert me["name"] == "bob" and me["role"] == "annotator"


def test_auth_errors(api: Api, dataset_id: int) -> None:
    missing = api.client.get(f"{V1}/datasets")
    assert missing.status_code == 401 and "token" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = api.client.get(f"{V1}/datasets", headers={"Authorization": "Bearer al_nope"})
    assert wrong.status_code == 401
    body = {"name": "other", "path": str(api.dataset_path)}
    forbidden = api.client.post(f"{V1}/datasets", json=body, headers=api.annotator)
    assert forbidden.status_code == 403 and "admin" in forbidden.json()["detail"]
    job = api.client.post(
        f"{V1}/datasets/{dataset_id}/jobs", json={"kind": "train"}, headers=api.annotator
    )
    assert job.status_code == 403


def test_datasets(api: Api, dataset_id: int) -> None:
    listed = api.client.get(f"{V1}/datasets", headers=api.annotator).json()
    assert listed["total"] == 1 and listed["items"][0]["patch_count"] == 4 * 3 * 4
    detail = api.client.get(f"{V1}/datasets/{dataset_id}", headers=api.annotator).json()
    assert detail["labels"]["total"] == 0 and detail["active_models"] == {
        "ae": None,
        "classifier": None,
    }
    assert api.client.get(f"{V1}/datasets/999", headers=api.annotator).status_code == 404
    dup = api.client.post(
        f"{V1}/datasets", json={"name": "demo", "path": str(api.dataset_path)}, headers=api.admin
    )
    assert dup.status_code == 409
    bad = api.client.post(
        f"{V1}/datasets", json={"name": "x", "path": "/nowhere"}, headers=api.admin
    )
    assert bad.status_code == 422 and "nowhere" in bad.json()["detail"]


def test_registering_starts_pretraining(api: Api) -> None:
    r = api.client.post(
        f"{V1}/datasets", json={"name": "auto", "path": str(api.dataset_path)}, headers=api.admin
    )
    assert r.status_code == 201
    jobs = api.client.get(f"{V1}/jobs", params={"dataset_id": r.json()["id"]}, headers=api.admin)
    assert [j["kind"] for j in jobs.json()["items"]] == ["pretrain"]
    queued = list((api.settings.broker_dir / "queue").iterdir())
    assert len(queued) == 1, "the job id went to the broker"


def test_lease_label_skip_release(api: Api, dataset_id: int) -> None:
    add_tasks(api, dataset_id, 3)
    carol = api.token("carol")
    first = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=api.annotator).json()
    second = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=carol).json()
    a, b = first["task"], second["task"]
    assert a["id"] != b["id"] and a["status"] == "leased" and first["remaining"] == 2

    stolen = api.client.post(f"{V1}/tasks/{a['id']}/label", json={"label": "clean"}, headers=carol)
    assert stolen.status_code == 409

    body = {"label": "artifact", "artifact_type": "scratch", "idempotency_key": "k1"}
    one = api.client.post(f"{V1}/tasks/{a['id']}/label", json=body, headers=api.annotator)
    again = api.client.post(f"{V1}/tasks/{a['id']}/label", json=body, headers=api.annotator)
    assert one.status_code == 200 and again.json()["id"] == one.json()["id"]
    assert one.json()["annotator"] == "bob" and one.json()["x"] == a["x"]

    skipped = api.client.post(f"{V1}/tasks/{b['id']}/skip", headers=carol).json()
    assert skipped["status"] == "open", "a skipped task goes back to the queue for the others"
    third = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=carol).json()["task"]
    released = api.client.post(f"{V1}/tasks/{third['id']}/release", headers=carol)
    assert released.json()["status"] == "open"
    not_mine = api.client.post(f"{V1}/tasks/{third['id']}/release", headers=carol)
    assert not_mine.status_code == 409

    with session_scope(api.sessions()) as session:
        labels = session.scalars(select(Label)).all()
        assert [(lab.label, lab.artifact_type, lab.annotator) for lab in labels] == [
            ("artifact", "scratch", "bob")
        ]


def test_expired_leases_go_back_to_the_queue(api: Api, dataset_id: int) -> None:
    (task_id,) = add_tasks(api, dataset_id, 1)
    carol = api.token("carol")
    assert (
        api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=api.annotator).json()[
            "task"
        ]["id"]
        == task_id
    )
    empty = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=carol).json()
    assert empty["task"] is None and "no tasks" in empty["message"]
    with session_scope(api.sessions()) as session:
        session.execute(
            update(AnnotationTask).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    again = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=carol).json()
    assert again["task"]["id"] == task_id


def test_labels_for_any_patch_filters_undo_and_disagreement(api: Api, dataset_id: int) -> None:
    carol = api.token("carol")
    spot = {"x": 10, "y": 20, "z": 1}
    r1 = api.client.post(
        f"{V1}/datasets/{dataset_id}/labels", json={**spot, "label": "clean"}, headers=api.annotator
    )
    r2 = api.client.post(
        f"{V1}/datasets/{dataset_id}/labels",
        json={**spot, "label": "artifact", "artifact_type": "debris"},
        headers=carol,
    )
    assert r1.status_code == r2.status_code == 201
    assert r1.json()["w"] == 140, "w and h default to the grid patch"
    listed = api.client.get(
        f"{V1}/datasets/{dataset_id}/labels", params={"label": "artifact"}, headers=api.annotator
    ).json()
    assert listed["total"] == 1 and listed["items"][0]["annotator"] == "carol"
    dis = api.client.get(f"{V1}/datasets/{dataset_id}/disagreements", headers=api.annotator).json()
    assert dis["total"] == 1 and {v["annotator"] for v in dis["items"][0]["labels"]} == {
        "bob",
        "carol",
    }

    assert (
        api.client.delete(f"{V1}/labels/{r2.json()['id']}", headers=api.annotator).status_code
        == 403
    )
    assert api.client.delete(f"{V1}/labels/{r2.json()['id']}", headers=carol).status_code == 204
    assert api.client.delete(f"{V1}/labels/{r2.json()['id']}", headers=carol).status_code == 404


def test_undo_on_a_task_leases_it_back(api: Api, dataset_id: int) -> None:
    add_tasks(api, dataset_id, 2)
    task = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=api.annotator).json()[
        "task"
    ]
    label = api.client.post(
        f"{V1}/tasks/{task['id']}/label", json={"label": "clean"}, headers=api.annotator
    ).json()
    api.client.delete(f"{V1}/labels/{label['id']}", headers=api.annotator)
    back = api.client.get(f"{V1}/tasks/{task['id']}", headers=api.annotator).json()
    assert back["status"] == "leased"
    relabel = api.client.post(
        f"{V1}/tasks/{task['id']}/label", json={"label": "artifact"}, headers=api.annotator
    )
    assert relabel.status_code == 200


def test_invalid_input_is_422_with_a_message(api: Api, dataset_id: int) -> None:
    (task_id,) = add_tasks(api, dataset_id, 1)
    for body in (
        {"label": "maybe"},
        {"label": "clean", "artifact_type": "scratch"},
        {"label": "artifact", "artifact_type": "ghost"},
        {},
    ):
        r = api.client.post(f"{V1}/tasks/{task_id}/label", json=body, headers=api.annotator)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["detail"] and "Traceback" not in r.text
    outside = api.client.post(
        f"{V1}/datasets/{dataset_id}/labels",
        json={"x": 10_000, "y": 0, "z": 0, "label": "clean"},
        headers=api.annotator,
    )
    assert outside.status_code == 422 and "outside" in outside.json()["detail"]
    assert api.client.get(f"{V1}/tasks/999999", headers=api.annotator).status_code == 404
    assert api.client.get(f"{V1}/tasks/99999999999999", headers=api.annotator).status_code == 422
    assert (
        api.client.get(f"{V1}/jobs", params={"state": "weird"}, headers=api.annotator).status_code
        == 422
    )


def test_patch_images(api: Api, dataset_id: int) -> None:
    (task_id,) = add_tasks(api, dataset_id, 1)
    img = api.client.get(
        f"{V1}/tasks/{task_id}/image.png", params={"margin": 20}, headers=api.annotator
    )
    assert img.status_code == 200 and img.content[:8] == b"\x89PNG\r\n\x1a\n"
    any_patch = api.client.get(
        f"{V1}/datasets/{dataset_id}/patch.png",
        params={"x": 140, "y": 140, "z": 2, "lo": 0, "hi": 255},
        headers=api.annotator,
    )
    assert any_patch.status_code == 200
    off = api.client.get(
        f"{V1}/datasets/{dataset_id}/patch.png",
        params={"x": 0, "y": 0, "z": 99},
        headers=api.annotator,
    )
    assert off.status_code == 422


def test_model_versions_activate(api: Api, dataset_id: int) -> None:
    with session_scope(api.sessions()) as session:
        ae = ModelVersion(dataset_id=dataset_id, kind="ae", status="ready", active=True)
        session.add(ae)
        session.flush()
        old = ModelVersion(
            dataset_id=dataset_id,
            kind="classifier",
            parent_id=ae.id,
            status="ready",
            metrics={"audit": {"f1": 0.5}},
        )
        new = ModelVersion(
            dataset_id=dataset_id, kind="classifier", parent_id=ae.id, status="ready", active=True
        )
        broken = ModelVersion(
            dataset_id=dataset_id, kind="classifier", parent_id=ae.id, status="failed"
        )
        session.add_all([old, new, broken])
        session.flush()
        old_id, new_id, broken_id = old.id, new.id, broken.id
    listed = api.client.get(
        f"{V1}/datasets/{dataset_id}/models", params={"kind": "classifier"}, headers=api.annotator
    ).json()
    assert [m["id"] for m in listed["items"]] == [broken_id, new_id, old_id]
    assert (
        api.client.post(f"{V1}/models/{old_id}/activate", headers=api.annotator).status_code == 403
    )
    assert (
        api.client.post(f"{V1}/models/{broken_id}/activate", headers=api.admin).status_code == 409
    )
    r = api.client.post(f"{V1}/models/{old_id}/activate", headers=api.admin)
    assert r.status_code == 200 and r.json()["active"] and r.json()["pinned"]
    flags = {
        m["id"]: m["active"]
        for m in api.client.get(f"{V1}/datasets/{dataset_id}/models", headers=api.admin).json()[
            "items"
        ]
    }
    assert flags[old_id] and not flags[new_id]
    detail = api.client.get(f"{V1}/models/{old_id}", headers=api.annotator).json()
    assert detail["metrics"] == {"audit": {"f1": 0.5}}
    scoring = api.client.get(f"{V1}/jobs", params={"kind": "score"}, headers=api.admin).json()
    assert scoring["items"][0]["params"]["model_version_id"] == old_id, (
        "proposals follow the active model"
    )
    back = api.client.post(f"{V1}/datasets/{dataset_id}/models/unpin", headers=api.admin).json()
    assert back["id"] == new_id and back["active"]


def test_jobs_start_coalesce_cancel(api: Api, dataset_id: int) -> None:
    first = api.client.post(
        f"{V1}/datasets/{dataset_id}/jobs", json={"kind": "train"}, headers=api.admin
    )
    second = api.client.post(
        f"{V1}/datasets/{dataset_id}/jobs", json={"kind": "train"}, headers=api.admin
    )
    assert first.status_code == 202 and second.json()["coalesced"]
    assert second.json()["job"]["id"] == first.json()["job"]["id"]
    job_id = first.json()["job"]["id"]
    assert api.client.get(f"{V1}/jobs/{job_id}", headers=api.annotator).json()["state"] == "queued"
    cancelled = api.client.post(f"{V1}/jobs/{job_id}/cancel", headers=api.admin).json()
    assert cancelled["state"] == "cancelled"
    unknown = api.client.post(
        f"{V1}/datasets/{dataset_id}/jobs", json={"kind": "dance"}, headers=api.admin
    )
    assert unknown.status_code == 422
    assert api.client.get(f"{V1}/jobs/424242", headers=api.admin).status_code == 404
    magic = api.client.post(
        f"{V1}/datasets/{dataset_id}/jobs",
        json={"kind": "propose", "params": {"strategy": "magic"}},
        headers=api.admin,
    )
    assert magic.status_code in (400, 422) and "choose one of" in magic.text, magic.text
    assert "hybrid" in magic.text and "Traceback" not in magic.text


def test_pagination(api: Api, dataset_id: int) -> None:
    add_tasks(api, dataset_id, 7)
    page = api.client.get(
        f"{V1}/datasets/{dataset_id}/tasks", params={"limit": 3, "offset": 3}, headers=api.admin
    ).json()
    assert page["total"] == 7 and len(page["items"]) == 3 and page["items"][0]["rank"] == 3
    assert (
        api.client.get(
            f"{V1}/datasets/{dataset_id}/tasks", params={"limit": 0}, headers=api.annotator
        ).status_code
        == 422
    )
