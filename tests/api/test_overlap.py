"""Overlap: audit patches and a seeded share of proposals go to a second, different annotator;
leasing never offers a patch to someone who labelled it. Pre-labels: the model's verdict on a
proposal, never on an audit patch."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from server.annotation.proposals import add_audit_patches, replace_proposals
from server.datasets.service import get_dataset, grid_of
from server.db.base import session_scope
from server.db.tables import AnnotationTask, Label, ModelVersion
from tests.api.conftest import Api, add_tasks

V1 = "/api/v1"


def _set(api: Api, task_id: int, **values: Any) -> None:
    with session_scope(api.sessions()) as session:
        task = session.get(AnnotationTask, task_id)
        assert task is not None
        for column, value in values.items():
            setattr(task, column, value)


def _task(api: Api, task_id: int) -> AnnotationTask:
    with session_scope(api.sessions()) as session:
        task = session.get(AnnotationTask, task_id)
        assert task is not None
        session.expunge(task)
        return task


def _next(api: Api, dataset_id: int, headers: dict[str, str]) -> dict[str, Any] | None:
    r = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["task"]


def _label(api: Api, task_id: int, headers: dict[str, str], verdict: str = "clean") -> Any:
    r = api.client.post(f"{V1}/tasks/{task_id}/label", json={"label": verdict}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_an_overlap_task_goes_to_a_second_annotator_and_is_done_after_two(
    api: Api, dataset_id: int
) -> None:
    (task_id,) = add_tasks(api, dataset_id, 1)
    _set(api, task_id, labels_wanted=2)
    carol, dora = api.token("carol"), api.token("dora")

    handed = _next(api, dataset_id, api.annotator)
    assert handed is not None and handed["id"] == task_id
    assert handed["labels_wanted"] is None and handed["rank"] is None, "not shown to annotators"
    _label(api, task_id, api.annotator, "artifact")
    assert _task(api, task_id).status == "open", "it wants a second annotator"
    assert _next(api, dataset_id, api.annotator) is None, "never to the same annotator twice"
    # a label of the same annotator again (a REST client) does not count as a second one
    _label(api, task_id, api.annotator, "artifact")
    assert _task(api, task_id).status == "open"

    handed = _next(api, dataset_id, carol)
    assert handed is not None and handed["id"] == task_id
    _label(api, task_id, carol, "clean")
    done = _task(api, task_id)
    assert done.status == "labelled" and done.lease_holder_id is not None
    assert _next(api, dataset_id, dora) is None, "done after two distinct annotators"

    # counts: one task labelled, every label counted
    detail = api.client.get(f"{V1}/datasets/{dataset_id}", headers=api.admin).json()
    assert detail["tasks"].get("labelled") == 1 and detail["tasks"]["available"] == 0
    progress = api.client.get(f"{V1}/datasets/{dataset_id}/progress", headers=carol).json()
    assert progress["labels_total"] == 3 and progress["labels_since_training"] == 3
    assert progress["remaining"] == 0
    listed = api.client.get(f"{V1}/datasets/{dataset_id}/tasks", headers=api.admin).json()
    (item,) = listed["items"]
    assert item["status"] == "labelled" and item["labels_wanted"] == 2

    # undoing the second annotator's label gives the task back to them
    (carols,) = [
        lab
        for lab in api.client.get(
            f"{V1}/datasets/{dataset_id}/labels", params={"annotator": "carol"}, headers=carol
        ).json()["items"]
    ]
    assert api.client.delete(f"{V1}/labels/{carols['id']}", headers=carol).status_code == 204
    back = _task(api, task_id)
    assert back.status == "leased" and back.lease_holder_id is not None


def test_a_patch_is_never_offered_to_someone_who_labelled_it(api: Api, dataset_id: int) -> None:
    """A new task on a labelled patch (as a re-label task is) goes to the others only."""
    first, _ = add_tasks(api, dataset_id, 2)
    handed = _next(api, dataset_id, api.annotator)
    assert handed is not None and handed["id"] == first
    _label(api, first, api.annotator)
    with session_scope(api.sessions()) as session:
        old = session.get(AnnotationTask, first)
        assert old is not None
        again = AnnotationTask(
            dataset_id=dataset_id, kind="proposal", grid_index=old.grid_index, x=old.x, y=old.y,
            z=old.z, w=old.w, h=old.h, rank=-1, reason="relabel", status="open",
        )  # fmt: skip
        session.add(again)
        session.flush()
        again_id = again.id
    handed = _next(api, dataset_id, api.annotator)
    assert handed is not None and handed["id"] != again_id, "bob labelled that patch"
    carol = api.token("carol")
    handed = _next(api, dataset_id, carol)
    assert handed is not None and handed["id"] == again_id


def test_audit_tasks_always_want_two_annotators(api: Api, dataset_id: int) -> None:
    with session_scope(api.sessions()) as session:
        dataset = get_dataset(session, dataset_id)
        dataset.settings = {**dataset.settings, "overlap_share": 0.0}
        add_audit_patches(session, dataset=dataset, grid=grid_of(dataset), indices=[5])
        (audit,) = session.scalars(select(AnnotationTask).where(AnnotationTask.kind == "audit"))
        assert audit.labels_wanted == 2
        audit_id = audit.id
    carol = api.token("carol")
    handed = _next(api, dataset_id, api.annotator)
    assert handed is not None and handed["id"] == audit_id and handed["kind"] == "proposal"
    _label(api, audit_id, api.annotator)
    assert _task(api, audit_id).status == "open"
    assert _next(api, dataset_id, api.annotator) is None
    handed = _next(api, dataset_id, carol)
    assert handed is not None and handed["id"] == audit_id
    _label(api, audit_id, carol)
    assert _task(api, audit_id).status == "labelled"


def _batch(api: Api, dataset_id: int, indices: list[int]) -> dict[int, int]:
    """A new batch of proposals; grid index -> labels wanted of its open proposals."""
    with session_scope(api.sessions()) as session:
        dataset = get_dataset(session, dataset_id)
        replace_proposals(
            session, dataset=dataset, grid=grid_of(dataset), model_version_id=None, job_id=None,
            picks=[{"index": i, "reason": "uncertain"} for i in indices],
        )  # fmt: skip
        tasks = session.scalars(
            select(AnnotationTask).where(
                AnnotationTask.dataset_id == dataset_id,
                AnnotationTask.kind == "proposal",
                AnnotationTask.status == "open",
            )
        )
        return {int(t.grid_index or 0): t.labels_wanted for t in tasks}


def test_the_overlap_share_is_seeded_validated_and_zero_turns_it_off(
    api: Api, dataset_id: int
) -> None:
    overlap = f"{V1}/datasets/{dataset_id}/overlap"
    assert api.client.get(overlap, headers=api.annotator).json() == {"overlap_share": 0.05}
    for bad in (1.5, -0.1, "many"):
        r = api.client.put(overlap, json={"overlap_share": bad}, headers=api.admin)
        assert r.status_code == 422, r.text
    refused = api.client.put(overlap, json={"overlap_share": 0.5}, headers=api.annotator)
    assert refused.status_code == 403

    indices = list(range(40))  # the grid has 48 patches
    assert api.client.put(overlap, json={"overlap_share": 0.5}, headers=api.admin).is_success
    half = _batch(api, dataset_id, indices)
    assert set(half.values()) == {1, 2} and 8 <= sum(w == 2 for w in half.values()) <= 32
    assert _batch(api, dataset_id, indices) == half, "the same patches every time (seeded)"

    assert api.client.put(overlap, json={"overlap_share": 0}, headers=api.admin).is_success
    assert set(_batch(api, dataset_id, indices).values()) == {1}, "0 turns overlap off"
    assert api.client.put(overlap, json={"overlap_share": 1}, headers=api.admin).is_success
    assert set(_batch(api, dataset_id, indices).values()) == {2}


def test_a_new_batch_keeps_a_half_overlapped_task_in_place(api: Api, dataset_id: int) -> None:
    half, plain = add_tasks(api, dataset_id, 2)
    _set(api, half, labels_wanted=2)
    handed = _next(api, dataset_id, api.annotator)
    assert handed is not None and handed["id"] == half
    _label(api, half, api.annotator, "artifact")
    rank = _task(api, half).rank

    api.client.put(
        f"{V1}/datasets/{dataset_id}/overlap", json={"overlap_share": 0}, headers=api.admin
    )
    _batch(api, dataset_id, [0, 1, 10, 11])  # 0: the half-overlapped patch proposed again
    with session_scope(api.sessions()) as session:
        from server.annotation.proposals import demote_superseded

        demote_superseded(session, dataset_id=dataset_id, first_new_id=plain + 1)
    kept = _task(api, half)
    assert kept.status == "open" and kept.rank == rank, "neither retired nor moved back"
    assert _task(api, plain).status == "retired"
    with session_scope(api.sessions()) as session:
        in_play = session.scalars(
            select(AnnotationTask.grid_index).where(
                AnnotationTask.dataset_id == dataset_id, AnnotationTask.status == "open"
            )
        ).all()
    assert sorted(in_play) == [0, 1, 10, 11], "patch 0 in play once: the kept task"
    carol = api.token("carol")
    handed = _next(api, dataset_id, carol)
    assert handed is not None and handed["id"] == half, "its rank is ahead of the new batch"
    _label(api, half, carol, "artifact")
    assert _task(api, half).status == "labelled"


def test_prelabels_for_proposals_only(api: Api, dataset_id: int) -> None:
    proposal, _ = add_tasks(api, dataset_id, 2)
    with session_scope(api.sessions()) as session:
        version = ModelVersion(
            dataset_id=dataset_id, kind="classifier", status="ready", config={"threshold": 0.7}
        )
        session.add(version)
        session.flush()
        version_id = version.id
    _set(api, proposal, p_artifact=0.65, model_version_id=version_id, uncertainty=0.3, score=1.0)
    handed = _next(api, dataset_id, api.annotator)
    assert handed is not None and handed["id"] == proposal
    assert handed["prelabel"] == {"label": "clean", "p_artifact": 0.65, "threshold": 0.7}
    assert handed["p_artifact"] is handed["model_version_id"] is handed["score"] is None
    wrong = api.client.post(
        f"{V1}/tasks/{proposal}/label",
        json={"label": "artifact", "from_prelabel": True},
        headers=api.annotator,
    )
    assert wrong.status_code == 422 and "pre-label" in wrong.json()["detail"]
    accepted = api.client.post(
        f"{V1}/tasks/{proposal}/label",
        json={"label": "clean", "from_prelabel": True, "idempotency_key": "p-1"},
        headers=api.annotator,
    )
    assert accepted.status_code == 200 and accepted.json()["from_prelabel"] is True
    with session_scope(api.sessions()) as session:
        stored = session.scalar(select(Label).where(Label.task_id == proposal))
        assert stored is not None and stored.from_prelabel and stored.label == "clean"

    # an audit patch, even one that carries a score, is handed out with no model view at all
    with session_scope(api.sessions()) as session:
        dataset = get_dataset(session, dataset_id)
        add_audit_patches(session, dataset=dataset, grid=grid_of(dataset), indices=[7])
        audit = session.scalar(select(AnnotationTask).where(AnnotationTask.kind == "audit"))
        assert audit is not None
        audit.rank, audit.p_artifact, audit.model_version_id = -1, 0.9, version_id
        audit_id = audit.id
    handed = _next(api, dataset_id, api.annotator)
    assert handed is not None and handed["id"] == audit_id
    model_view = ("prelabel", "p_artifact", "uncertainty", "recon_error", "score")
    assert all(handed[key] is None for key in (*model_view, "model_version_id", "rank"))
    again = api.client.get(f"{V1}/tasks/{audit_id}", headers=api.annotator).json()
    assert again["prelabel"] is None and again["p_artifact"] is None
    refused = api.client.post(
        f"{V1}/tasks/{audit_id}/label",
        json={"label": "artifact", "from_prelabel": True},
        headers=api.annotator,
    )
    assert refused.status_code == 422
    assert refused.json()["detail"] == f"task {audit_id} has no pre-label to accept"
