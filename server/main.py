"""The FastAPI application: ``uvicorn server.main:app``.

Nothing heavy happens at import time: the database engine and the Celery client are made in
the lifespan, from the settings of the environment the server starts in.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from server.api import router as api_router
from server.api.state import AppState
from server.errors import ArtifactLoopError
from server.settings import Settings, get_settings

log = logging.getLogger("artifact_loop.api")

DESCRIPTION = """
Active learning for imaging artifacts in multi-beam SEM datasets stored in webKnossos.

Authenticate with `Authorization: Bearer <token>` (make one with
`artifact-loop token create --role admin NAME`). Annotators lease, label and skip tasks and read
patches; admins also register datasets, start jobs and activate model versions.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for ``settings`` (default: from the environment when the server starts)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _disable_nagle_on_listeners()
        state = AppState.start(settings or get_settings())
        app.state.artifact_loop = state
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title="artifact-loop",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )

    @app.exception_handler(ArtifactLoopError)
    async def _known_error(_request: Request, exc: ArtifactLoopError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        summary = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
            for e in problems
            if e["loc"]
        )
        return JSONResponse(
            {"detail": f"invalid request: {summary}", "errors": problems}, status_code=422
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server log, never into a response.
        ref = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", ref, request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error (reference {ref}); see the server log"}, status_code=500
        )

    app.include_router(api_router, prefix="/api/v1")
    from server.web.pages import mount_pages

    mount_pages(app)
    return app


def _disable_nagle_on_listeners() -> None:
    """Set TCP_NODELAY on this process's listening TCP sockets (accepted ones inherit it).

    ``uvicorn --workers N`` hands its workers a pre-bound socket that asyncio does not
    recognise as TCP, so responses on keep-alive connections wait ~40 ms for delayed ACKs.
    """
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return
    for entry in fds.iterdir():
        try:
            sock = socket.socket(fileno=int(entry.name))
        except (OSError, ValueError):
            continue
        try:
            # The listener may not be listening yet when the first worker starts up:
            # take every bound, unconnected TCP socket.
            if (
                sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.type == socket.SOCK_STREAM
                and sock.getsockname()[1]
                and not _connected(sock)
            ):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        finally:
            sock.detach()


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


app = create_app()
