"""The web pages served by the API itself: the labeling page and the dashboard.

Plain HTML, CSS and JavaScript under ``server/web/static`` (no build step); they talk to the same
JSON API as every other client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"


def mount_pages(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/label")

    @app.get("/label", include_in_schema=False)
    def label_page() -> FileResponse:
        return FileResponse(STATIC / "label.html")

    @app.get("/dashboard", include_in_schema=False)
    def dashboard_page() -> FileResponse:
        return FileResponse(STATIC / "dashboard.html")
