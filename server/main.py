"""The FastAPI application: ``uvicorn server.main:app``.

Nothing heavy happens at import time: the database engine and the Celery client are made in
the lifespan, from the settings of the environment the server starts in.
"""

from __future__ import annotations

import gc
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

from anyio import to_thread
from fastapi import APIRouter, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.utils import create_model_field
from sqlalchemy import exc as sa_exc

from server.api import router as api_router
from server.api.deps import admin_user, current_user
from server.api.guards import RequestGuard
from server.api.outages import Outages
from server.api.schemas import ErrorOut, ValidationErrorOut
from server.api.state import AppState
from server.db.base import API_THREADS, DATABASE_DOWN
from server.errors import ArtifactLoopError
from server.jobs.queue import broker_errors
from server.settings import Settings, get_settings
from server.web.pages import mount_pages

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
        # the thread pool of the plain ``def`` routes; the database pool has a connection each
        to_thread.current_default_thread_limiter().total_tokens = API_THREADS
        state = AppState.start(settings or get_settings())
        app.state.artifact_loop = state
        # what start-up made (modules, the ORM's mappings, the schemas: about 200,000 objects)
        # lives as long as the process: out of the collector's sight, its full collections
        # under load walk only what the requests made
        gc.freeze()
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

    outages = Outages()
    app.state.outages = outages

    def retry_after(request: Request) -> dict[str, str]:
        state: AppState | None = getattr(request.app.state, "artifact_loop", None)
        return {"Retry-After": str(state.settings.retry_after_s if state else 5)}

    @app.exception_handler(ArtifactLoopError)
    async def _known_error(request: Request, exc: ArtifactLoopError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        if exc.status_code == 503:
            headers = retry_after(request)
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code, headers=headers)

    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        outages.failed("database", exc)
        return JSONResponse(
            {"detail": "the database is unreachable or busy; retry later"},
            status_code=503,
            headers=retry_after(request),
        )

    async def _broker_down(request: Request, exc: Exception) -> JSONResponse:
        outages.failed("broker", exc)
        return JSONResponse(
            {"detail": "the job queue (broker) is unreachable; retry later"},
            status_code=503,
            headers=retry_after(request),
        )

    async def _unstorable(_request: Request, exc: Exception) -> JSONResponse:
        # what got past validation but not into the database: NUL bytes, lone surrogates
        if isinstance(exc, sa_exc.DataError) or isinstance(
            getattr(exc, "orig", None), UnicodeError
        ):
            return JSONResponse(
                {"detail": "invalid request: a value cannot be stored (NUL or unencodable text)"},
                status_code=422,
            )
        return await _unexpected(_request, exc)

    for error in DATABASE_DOWN:
        app.add_exception_handler(error, _database_down)
    for error in broker_errors():
        app.add_exception_handler(error, _broker_down)
    app.add_exception_handler(sa_exc.StatementError, _unstorable)

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

    declare_error_responses(api_router)
    app.include_router(api_router, prefix="/api/v1")
    app.add_middleware(RequestGuard)

    mount_pages(app)
    return app


def _uses(dependant: Dependant, call: object) -> bool:
    return any(d.call is call or _uses(d, call) for d in dependant.dependencies)


def _api_routes(router: APIRouter) -> Iterator[APIRoute]:
    for route in router.routes:
        if isinstance(route, APIRoute):
            yield route
        elif isinstance(getattr(route, "original_router", None), APIRouter):
            yield from _api_routes(route.original_router)  # type: ignore[attr-defined]


def declare_error_responses(router: APIRouter) -> None:
    """Put every error status an operation can answer into the OpenAPI schema, with its body.

    Derived from what each route depends on, so a new route is documented as it is added.
    Call before the router is included: including it builds the routes the app serves.
    """
    for route in _api_routes(router):
        codes: dict[int, str] = {422: "Invalid request"}
        if route.path != "/health":
            codes[503] = "The database or the job queue is unreachable; see `Retry-After`"
        if _uses(route.dependant, current_user):
            codes[401] = "Missing, invalid or revoked token"
        if _uses(route.dependant, admin_user):
            codes[403] = "The token is not an admin's"
        if "{" in route.path:
            codes[404] = "No such resource"
        if (route.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}:
            codes[400] = "The body could not be parsed"
            codes[409] = "Conflicts with the current state"
            codes[413] = "The body is larger than the limit"
        for code, description in codes.items():
            existing = dict(route.responses.get(code, {}))
            if "model" in existing:
                continue
            existing.setdefault("description", description)
            existing["model"] = ValidationErrorOut if code == 422 else ErrorOut
            route.responses[code] = existing
            route.response_fields[code] = create_model_field(
                name=f"Response_{code}_{route.unique_id}",
                type_=existing["model"],
                mode="serialization",
            )


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
