"""Dependencies shared by the routers: the session, the caller, the job sender."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from server.api.state import AppState
from server.db.tables import Annotator
from server.errors import Forbidden

bearer = HTTPBearer(auto_error=False, description="An API token from `artifact-loop token create`")


def get_state(request: Request) -> AppState:
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
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def current_user(
    state: StateDep,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Annotator:
    # requests with a body were authenticated before it was read (server.api.guards)
    known: Annotator | None = getattr(request.state, "caller", None)
    if known is not None:
        return known
    return state.caller(credentials.credentials if credentials else None)


CurrentUser = Annotated[Annotator, Depends(current_user)]


def admin_user(user: CurrentUser) -> Annotator:
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


PageDep = Annotated[Page, Depends(Page)]


def _id_path(what: str) -> object:
    return Path(ge=1, le=2**31 - 1, description=f"Id of the {what}")


DatasetId = Annotated[int, _id_path("dataset")]
TaskId = Annotated[int, _id_path("task")]
VersionId = Annotated[int, _id_path("model version")]
JobId = Annotated[int, _id_path("job")]
