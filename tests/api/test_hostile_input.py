"""Bad and hostile input: idempotency key reuse, NUL bytes and lone surrogates, zip bombs,
dataset paths outside the roots and URLs to other hosts."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.auth import create_token
from server.db import migrate
from server.db.base import session_scope
from server.labels.bounded_xml import MAX_NML_NODES
from server.main import create_app
from tests.api.conftest import Api, add_tasks, make_settings
from tests.conftest import write_test_dataset

V1 = "/api/v1"


def test_idempotency_key_is_scoped_to_its_task_and_verdict(api: Api, dataset_id: int) -> None:
    add_tasks(api, dataset_id, 2)
    first = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=api.annotator)
    second = api.client.post(f"{V1}/datasets/{dataset_id}/tasks/next", headers=api.annotator)
    a, b = first.json()["task"]["id"], second.json()["task"]["id"]
    body = {"label": "clean", "idempotency_key": "same-key"}
    one = api.client.post(f"{V1}/tasks/{a}/label", json=body, headers=api.annotator)
    assert one.status_code == 200, one.text
    retry = api.client.post(f"{V1}/tasks/{a}/label", json=body, headers=api.annotator)
    assert retry.status_code == 200 and retry.json()["id"] == one.json()["id"]

    other_task = api.client.post(f"{V1}/tasks/{b}/label", json=body, headers=api.annotator)
    assert other_task.status_code == 409
    assert f"task {a}" in other_task.json()["detail"]
    other_verdict = api.client.post(
        f"{V1}/tasks/{a}/label",
        json={"label": "artifact", "idempotency_key": "same-key"},
        headers=api.annotator,
    )
    assert other_verdict.status_code == 409
    assert "'clean'" in other_verdict.json()["detail"]

    # task b is still open to the caller: a fresh key labels it
    fresh = api.client.post(
        f"{V1}/tasks/{b}/label",
        json={"label": "clean", "idempotency_key": "k2"},
        headers=api.annotator,
    )
    assert fresh.status_code == 200
    labels = api.client.get(f"{V1}/datasets/{dataset_id}/labels", headers=api.admin).json()
    assert sorted((lab["task_id"], lab["label"]) for lab in labels["items"]) == [
        (a, "clean"),
        (b, "clean"),
    ]

    # another annotator's keys are theirs: the same key string is no conflict
    carol = api.token("carol")
    free = {"x": 0, "y": 0, "z": 0, "label": "artifact", "idempotency_key": "same-key"}
    assert (
        api.client.post(f"{V1}/datasets/{dataset_id}/labels", json=free, headers=carol).status_code
        == 201
    )
    moved = {**free, "x": 140}
    again = api.client.post(f"{V1}/datasets/{dataset_id}/labels", json=moved, headers=carol)
    assert again.status_code == 409


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("get", "/datasets/{ds}/labels", {"params": {"annotator": "a\x00b"}}),
        ("get", "/datasets/{ds}/tasks", {"params": {"status": "\x00"}}),
        ("get", "/datasets/%00", {}),
        ("post", "/datasets", {"content": b'{"name": "n\\u0000", "path": "/x"}'}),
        ("post", "/datasets", {"content": b'{"name": "\\ud800", "path": "/x"}'}),
        (
            "post",
            "/datasets/{ds}/labels",
            {
                "content": b'{"x": 0, "y": 0, "z": 0, "label": "clean", "idempotency_key": "\\u0000"}'
            },
        ),
        (
            "post",
            "/tasks/1/label",
            {"content": b'{"label": "clean", "idempotency_key": "\\udfff"}'},
        ),
    ],
)
def test_nul_bytes_and_lone_surrogates_are_422(
    api: Api, dataset_id: int, method: str, path: str, kwargs: dict[str, object]
) -> None:
    headers = {**api.admin, "Content-Type": "application/json"}
    r = api.client.request(method, V1 + path.format(ds=dataset_id), headers=headers, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 422, r.text
    assert "detail" in r.json()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def capped(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[TestClient, dict[str, str], Path]]:
    """An app with small zip caps and one dataset root."""
    root = tmp_path / "roots" / "em"
    write_test_dataset(root / "inside", shape=(280, 280, 2))
    settings = make_settings(
        tmp_path,
        sqlite_url,
        max_zip_members=3,
        max_zip_inflated_bytes=2_000_000,
        dataset_roots=f"{tmp_path / 'roots'}",
        wk_hosts="https://wk.example.org",
    )
    settings.ensure_dirs()
    migrate.upgrade(sqlite_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        sessions = client.app.state.artifact_loop.runtime.sessions  # type: ignore[attr-defined]
        with session_scope(sessions) as session:
            _, secret = create_token(session, name="ada", role="admin")
        yield client, {"Authorization": f"Bearer {secret}"}, tmp_path


def test_zip_over_the_total_or_member_cap_is_refused(
    capped: tuple[TestClient, dict[str, str], Path],
) -> None:
    client, admin, tmp_path = capped
    ds = client.post(
        f"{V1}/datasets",
        json={"name": "in", "path": str(tmp_path / "roots" / "em" / "inside"), "pretrain": False},
        headers=admin,
    )
    assert ds.status_code == 201, ds.text
    url = f"{V1}/datasets/{ds.json()['id']}/labels/import"
    # each member is under the per-file cap, all of them together are over the total
    bomb = _zip({f"part{i}.nml": b" " * 900_000 for i in range(3)})
    assert len(bomb) < 50_000
    r = client.post(url, files={"file": ("bomb.zip", bomb, "application/zip")}, headers=admin)
    assert r.status_code == 422 and "in all" in r.json()["detail"], r.text
    many = _zip({f"part{i}.nml": b"<x/>" for i in range(4)})
    r = client.post(url, files={"file": ("many.zip", many, "application/zip")}, headers=admin)
    assert r.status_code == 422 and "4 NML files" in r.json()["detail"], r.text


def _dense_nml(nodes: int) -> bytes:
    """One tree of ``nodes`` nodes: a few hundred KB zipped, tens of MB of XML."""
    node = b'<node id="%d" x="70" y="70" z="0" radius="1"/>'
    return b"".join(
        [
            b'<things><parameters><experiment name="in"/><scale x="32" y="32" z="35"/>',
            b'</parameters><thing id="1" name="clean"><nodes>',
            *(node % i for i in range(1, nodes + 1)),
            b"</nodes><edges/></thing></things>",
        ]
    )


def test_dense_xml_is_refused_in_moments(api: Api, dataset_id: int) -> None:
    url = f"{V1}/datasets/{dataset_id}/labels/import"
    client, admin = api.client, api.admin
    dense = _zip({"dense.nml": _dense_nml(MAX_NML_NODES + 1)})
    assert len(dense) < 500_000
    started = time.monotonic()
    r = client.post(url, files={"file": ("dense.zip", dense, "application/zip")}, headers=admin)
    took = time.monotonic() - started
    assert r.status_code == 422 and "nodes" in r.json()["detail"], r.text
    assert took < 5, f"{took:.1f} s"
    bomb = b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "aaaaaaaaaa">]><things>&a;</things>'
    r = client.post(url, files={"file": ("e.nml", bomb, "text/xml")}, headers=admin)
    assert r.status_code == 422 and "DOCTYPE" in r.json()["detail"], r.text
    # a file within the bounds is read as before
    small = _zip({"small.nml": _dense_nml(3)})
    r = client.post(url, files={"file": ("small.zip", small, "application/zip")}, headers=admin)
    assert r.status_code in (200, 201), r.text


def test_dataset_paths_only_under_the_roots(
    capped: tuple[TestClient, dict[str, str], Path],
) -> None:
    client, admin, tmp_path = capped
    outside = tmp_path / "outside"
    write_test_dataset(outside, shape=(280, 280, 2))
    (tmp_path / "roots" / "em" / "link").symlink_to(outside)
    for path in (
        str(outside),
        f"{tmp_path / 'roots' / 'em'}/../../outside",
        str(tmp_path / "roots" / "em" / "link"),
        "/etc",
    ):
        r = client.post(f"{V1}/datasets", json={"name": "x", "path": path}, headers=admin)
        assert r.status_code == 422, (path, r.text)
        detail = r.json()["detail"]
        assert repr(path) in detail and str(outside.resolve()) not in detail.replace(repr(path), "")
    missing = client.post(
        f"{V1}/datasets",
        json={"name": "x", "path": str(tmp_path / "roots" / "em" / "nothing")},
        headers=admin,
    )
    assert missing.status_code == 422


def test_dataset_urls_only_to_the_configured_hosts(
    capped: tuple[TestClient, dict[str, str], Path],
) -> None:
    client, admin, _ = capped
    with watched_port() as (port, contacted):
        for url in (
            f"http://127.0.0.1:{port}/datasets/org/ds/view",
            f"http://127.0.0.1:{port}/data/zarr3",
            "https://wk.example.org.evil.net/datasets/a/b/view",
            "s3://bucket/dataset",
            "file:///etc",
        ):
            r = client.post(f"{V1}/datasets", json={"name": "x", "path": url}, headers=admin)
            assert r.status_code == 422, (url, r.text)
            assert repr(url) in r.json()["detail"]
    assert contacted == []


@contextlib.contextmanager
def watched_port() -> Iterator[tuple[int, list[object]]]:
    """A local port the server must never be made to fetch from, and the connections it got
    (known once the block is left)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    contacted: list[object] = []

    def watch() -> None:
        for _ in range(15):
            with contextlib.suppress(OSError):
                contacted.append(listener.accept())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield listener.getsockname()[1], contacted
    finally:
        watcher.join()
        listener.close()


def _with_mag_path(folder: Path, mag_path: str) -> None:
    """Point the dataset's mag 1 at ``mag_path`` in its datasource-properties.json."""
    properties = folder / "datasource-properties.json"
    parsed = json.loads(properties.read_text())
    parsed["dataLayers"][0]["mags"][0]["path"] = mag_path
    properties.write_text(json.dumps(parsed))


def test_mag_paths_outside_the_roots_are_refused(
    capped: tuple[TestClient, dict[str, str], Path],
) -> None:
    client, admin, tmp_path = capped
    outside = tmp_path / "outside"
    write_test_dataset(outside, shape=(280, 280, 2))
    inside = tmp_path / "roots" / "em"
    for name, mag_path in (
        ("absolute", str(outside / "color" / "1")),
        ("relative", "../../../outside/color/1"),
    ):
        write_test_dataset(inside / name, shape=(280, 280, 2))
        _with_mag_path(inside / name, mag_path)
        r = client.post(
            f"{V1}/datasets", json={"name": name, "path": str(inside / name)}, headers=admin
        )
        assert r.status_code == 422, (mag_path, r.text)
        detail = r.json()["detail"]
        assert "layer 'color' mags[0] path" in detail and repr(mag_path) in detail, detail
        assert "ARTIFACT_LOOP_DATASET_ROOTS" in detail
    # a mag path inside the roots, in another dataset's folder, is fine
    _with_mag_path(inside / "absolute", str(inside / "inside" / "color" / "1"))
    r = client.post(
        f"{V1}/datasets", json={"name": "shared", "path": str(inside / "absolute")}, headers=admin
    )
    assert r.status_code == 201, r.text


def test_mag_urls_outside_the_allow_list_are_refused_unread(
    capped: tuple[TestClient, dict[str, str], Path],
) -> None:
    client, admin, tmp_path = capped
    folder = tmp_path / "roots" / "em" / "remote-mag"
    write_test_dataset(folder, shape=(280, 280, 2))
    with watched_port() as (port, contacted):
        for url in (f"http://127.0.0.1:{port}/data/color/1", "s3://bucket/color/1"):
            _with_mag_path(folder, url)
            r = client.post(
                f"{V1}/datasets", json={"name": "remote", "path": str(folder)}, headers=admin
            )
            assert r.status_code == 422, (url, r.text)
            assert repr(url) in r.json()["detail"] and "webKnossos server" in r.json()["detail"]
    assert contacted == []


def test_broker_down_is_503_with_retry_after(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, sqlite_url)
    settings.broker_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    migrate.upgrade(sqlite_url)
    write_test_dataset(tmp_path / "ds", shape=(280, 280, 2))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        sessions = client.app.state.artifact_loop.runtime.sessions  # type: ignore[attr-defined]
        with session_scope(sessions) as session:
            _, secret = create_token(session, name="ada", role="admin")
        admin = {"Authorization": f"Bearer {secret}"}
        ds = client.post(
            f"{V1}/datasets",
            json={"name": "d", "path": str(tmp_path / "ds"), "pretrain": False},
            headers=admin,
        )
        assert ds.status_code == 201, ds.text
        r = client.post(
            f"{V1}/datasets/{ds.json()['id']}/jobs", json={"kind": "pretrain"}, headers=admin
        )
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == str(settings.retry_after_s)
        assert "broker" in r.json()["detail"]
        # what needs no broker goes on working
        label = {"x": 0, "y": 0, "z": 0, "label": "clean"}
        ok = client.post(f"{V1}/datasets/{ds.json()['id']}/labels", json=label, headers=admin)
        assert ok.status_code == 201, ok.text
