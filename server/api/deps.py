"""Dependencies shared by the routers: the session, the caller, the job sender."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, TypeVar

from anyio import to_thread
from fastapi import Depends, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from server.api.state import AppState
from server.db.base import committed
from server.db.tables import Annotator
from server.errors import Forbidden

Row = TypeVar("Row")

bearer = HTTPBearer(auto_error=False, description="An API token from `artifact-loop token create`")


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain ``def`` dependency in the thread pool, and the hand-off
    # to a worker thread and back costs more CPU than the whole lookup
    state: AppState = request.app.state.artifact_loop
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep, request: Request) -> Iterator[Session]:
    """A session per request: committed when the handler returns, rolled back on error.

    On SQLite a request that may write takes the write lock when it begins: a read
    transaction that later upgrades to a write can fail at once with "database is locked"
    while a worker writes.
    """
    if request.method not in ("GET", "HEAD") and state.settings.is_sqlite:
        # lazily: the lock is taken by the handler's first query, not while other
        # dependencies (authentication) still write through their own sessions
        session = state.runtime.sessions(
            bind=state.runtime.engine.execution_options(sqlite_immediate=True)
        )
    else:
        session = state.runtime.sessions()
    with committed(session):
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def current_user(
    state: StateDep,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Annotator:
    # requests with a body were authenticated before it was read (server.api.guards); a
    # token seen lately needs no query; only the rest goes to a thread for the database
    known: Annotator | None = getattr(request.state, "caller", None)
    if known is not None:
        return known
    secret = credentials.credentials if credentials else None
    return state.cached_caller(secret) or await to_thread.run_sync(state.caller, secret)


CurrentUser = Annotated[Annotator, Depends(current_user)]


async def admin_user(user: CurrentUser) -> Annotator:
    if user.role != "admin":
        raise Forbidden(f"{user.name} is an annotator; this needs an admin token")
    return user


AdminUser = Annotated[Annotator, Depends(admin_user)]


class Page:
    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=1000, description="Items per page.")] = 50,
        offset: Annotated[int, Query(ge=0, le=2**62, description="Items to skip.")] = 0,
    ) -> None:
        self.limit = limit
        self.offset = offset

    def rows(self, session: Session, stmt: Select[Row], *, order_by: Any) -> tuple[list[Row], int]:
        """This page of ``stmt``'s rows in ``order_by`` order, and how many rows it has."""
        total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
        page = stmt.order_by(*order_by).limit(self.limit).offset(self.offset)
        return list(session.scalars(page)), int(total)


PageDep = Annotated[Page, Depends(Page)]


def _id_path(what: str) -> object:
    return Path(ge=1, le=2**31 - 1, description=f"Id of the {what}")


DatasetId = Annotated[int, _id_path("dataset")]
TaskId = Annotated[int, _id_path("task")]
VersionId = Annotated[int, _id_path("model version")]
JobId = Annotated[int, _id_path("job")]


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """``model`` as the JSON answer. A route of the annotation hot path returns this rather
    than the model: FastAPI would validate a returned model against the route's
    ``response_model`` once more, and for a plain ``def`` route do it in a second hop through
    the thread pool (the route's ``response_model`` still documents the answer)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")
