"""Liveness, readiness and who-am-I."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from server.api.deps import CurrentUser, StateDep
from server.api.schemas import Me

router = APIRouter(tags=["health"])


class ReadyOut(BaseModel):
    status: str
    database: str
    broker: str


@router.get("/health", summary="The process is up")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Database and broker are reachable",
    response_model=ReadyOut,
    responses={503: {"description": "A dependency is down", "model": ReadyOut}},
)
def ready(state: StateDep) -> Any:
    checks: dict[str, str] = {}
    try:
        with state.runtime.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means "not ready"
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        state.sender.ping_broker(timeout=2.0)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ok else "not ready", **checks}, 200 if ok else 503)


@router.get("/me", response_model=Me, summary="The caller's name and role")
def me(user: CurrentUser) -> Me:
    return Me(id=user.id, name=user.name, role=user.role)
