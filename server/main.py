"""The FastAPI application: ``uvicorn server.main:app``.

Nothing heavy happens at import time: the database engine and the Celery client are made in
the lifespan, from the settings of the environment the server starts in.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
    from server.web import mount_pages

    mount_pages(app)
    return app


app = create_app()
