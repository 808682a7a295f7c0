"""What every API request passes before a handler sees it.

- The caller is authenticated from the headers alone, before a byte of the body is read: a
  huge body without a valid token costs the server nothing.
- A body larger than its limit is refused on its declared length, or while it streams in.
- NUL characters and lone surrogates (which no database column can hold) are refused with
  422 wherever a string can come from: path, query and JSON body.
- Database and broker outages become 503 with ``Retry-After`` (see :mod:`outages`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from anyio import to_thread
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.db.base import DATABASE_DOWN
from server.errors import ArtifactLoopError

API_PREFIX = "/api/v1/"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UPLOAD_SLACK = 64 * 1024  # multipart boundaries and headers around an uploaded file
# a JSON string escape that may decode to NUL or a lone surrogate
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def unencodable(value: Any) -> str | None:
    """The first string in a decoded JSON value that no database can store, if any."""
    if isinstance(value, str):
        if "\x00" in value:
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            bad = unencodable(key) or unencodable(item)
            if bad is not None:
                return bad
    elif isinstance(value, list):
        for item in value:
            bad = unencodable(item)
            if bad is not None:
                return bad
    return None


class RequestGuard:
    """Pure ASGI middleware, so it can answer before the body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state.artifact_loop
        outages = scope["app"].state.outages
        refusal = self._refuse_early(scope)
        if refusal is not None:
            status, detail, headers = refusal
            await _respond(send, status, detail, headers)
            return
        if scope["method"] in BODY_METHODS:
            secret = _bearer(scope)
            try:
                caller = state.cached_caller(secret) or await to_thread.run_sync(
                    state.caller, secret
                )
            except ArtifactLoopError as exc:
                headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
                await _respond(send, exc.status_code, str(exc), headers)
                return
            except DATABASE_DOWN as exc:
                outages.failed("database", exc)
                await _respond(
                    send,
                    503,
                    "the database is unreachable; retry later",
                    {"Retry-After": str(state.settings.retry_after_s)},
                )
                return
            scope.setdefault("state", {})["caller"] = caller
            limit = self._body_limit(scope, state)
            declared = _header(scope, b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await _respond(
                    send, 413, f"request body larger than the limit of {limit:,} bytes", {}
                )
                return
            receive = _limited(receive, limit=limit, scope=scope)

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                outages.succeeded()
            await send(message)

        await self.app(scope, receive, send_and_watch)

    @staticmethod
    def _refuse_early(scope: Scope) -> tuple[int, str, dict[str, str]] | None:
        query: bytes = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query or "\x00" in scope["path"]:
            return 422, "invalid request: NUL characters are not allowed in the URL", {}
        if scope["method"] not in BODY_METHODS:
            return None
        if not _bearer(scope):
            return (
                401,
                "missing token: send `Authorization: Bearer <token>`",
                {"WWW-Authenticate": "Bearer"},
            )
        return None

    @staticmethod
    def _body_limit(scope: Scope, state: Any) -> int:
        if scope["path"].endswith("/labels/import"):
            return int(state.settings.max_upload_bytes) + UPLOAD_SLACK
        return int(state.settings.max_json_bytes)


def _limited(receive: Receive, *, limit: int, scope: Scope) -> Receive:
    """``receive`` that refuses a body growing past ``limit`` and checks a JSON body for
    strings no database can store."""
    content_type = (_header(scope, b"content-type") or "").lower()
    is_json = content_type.startswith("application/json") or content_type.endswith("+json")
    seen = 0
    chunks: list[bytes] = []

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] != "http.request":
            return message
        body: bytes = message.get("body", b"")
        seen += len(body)
        if seen > limit:
            raise HTTPException(413, f"request body larger than the limit of {limit:,} bytes")
        if is_json:
            chunks.append(body)
            if not message.get("more_body", False):
                _check_json(b"".join(chunks))
        return message

    return wrapped


def _check_json(raw: bytes) -> None:
    if not _SUSPECT_ESCAPE.search(raw):
        return
    try:
        decoded = json.loads(raw)
    except ValueError:
        return  # malformed JSON: the handler's validation answers 422 with the details
    bad = unencodable(decoded)
    if bad is not None:
        raise HTTPException(
            422,
            "invalid request: strings must not contain NUL characters or lone surrogates "
            f"(got {bad[:40]!r})",
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _bearer(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if not value:
        return None
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


async def _respond(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in headers.items()),
    ]
    # the unread body is not drained: the server closes the connection after this answer
    if status in (401, 413):
        raw_headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
