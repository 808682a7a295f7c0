"""Bodies are judged before they are read: no token, or a declared size over the limit, is
answered at once; a body without a declared size is cut off while it streams in. Real
uvicorn, so what reaches the socket is what a client would see."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from server.auth import create_token
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope
from tests.processes import api_server, service_env

MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    root = tmp_path_factory.mktemp("limits")
    url = f"sqlite:///{root / 'db.sqlite'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    with session_scope(make_sessionmaker(engine)) as session:
        _, secret = create_token(session, name="ada", role="admin")
    engine.dispose()
    env = service_env(
        ARTIFACT_LOOP_DATABASE_URL=url,
        ARTIFACT_LOOP_DATA_DIR=str(root / "data"),
        ARTIFACT_LOOP_BROKER_URL="filesystem://",
        ARTIFACT_LOOP_MAX_UPLOAD_BYTES=str(2 * MB),
    )
    with api_server(env, log=root / "api.log") as base:
        yield base, secret


def _answer_before_body(base: str, request_head: bytes, *, send_at_most: int) -> bytes:
    """Send the head and up to ``send_at_most`` body bytes; return the server's answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request_head)
        sock.setblocking(False)
        sent, chunk, answer = 0, b"x" * 65536, b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and b"\r\n\r\n" not in answer:
            try:
                answer += sock.recv(65536)
                continue
            except BlockingIOError:
                pass
            except OSError:
                break
            if sent < send_at_most:
                try:
                    sent += sock.send(chunk)
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    time.sleep(0.01)
            else:
                time.sleep(0.01)
    assert sent < send_at_most, "the server waited for the whole body"
    return answer


def test_huge_body_without_token_is_answered_unread(server: tuple[str, str]) -> None:
    base, _ = server
    declared = 300 * MB
    head = (
        f"POST /api/v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    answer = _answer_before_body(base, head, send_at_most=declared)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_declared_upload_over_the_limit_is_413_before_the_body(server: tuple[str, str]) -> None:
    base, secret = server
    declared = 1024 * MB
    head = (
        f"POST /api/v1/datasets/1/labels/import HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {secret}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    answer = _answer_before_body(base, head, send_at_most=declared)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_streamed_body_is_cut_off_at_the_limit(server: tuple[str, str]) -> None:
    base, secret = server
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"name": "x", "path": "'
        for _ in range(64):  # 64 MB, far above the 1 MB a JSON body may have
            sent += MB
            yield b"a" * MB
        yield b'"}'

    try:
        r = httpx.post(
            f"{base}/api/v1/datasets",
            content=body(),
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
            timeout=30,
        )
    except httpx.HTTPError:  # the server may close while the client still sends
        assert sent < 64 * MB
        return
    assert r.status_code == 413, r.text
    assert "limit" in r.json()["detail"]


def test_invalid_token_is_401_before_the_body(server: tuple[str, str]) -> None:
    base, _ = server
    declared = 50 * MB
    head = (
        f"POST /api/v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    answer = _answer_before_body(base, head, send_at_most=declared)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
