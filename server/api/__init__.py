"""The REST API under ``/api/v1``: one module of routes per resource, served from one flat list.

Each module declares its routes on a router of its own (with its tag); their routes are put
into one router here rather than included router by router: FastAPI resolves an included
router's routes on every request, and walking seven of them cost more than matching the path.
"""

from fastapi import APIRouter

from server.api import (
    annotators,
    datasets,
    health,
    jobs,
    labels,
    model_versions,
    suspects,
    tasks,
    webknossos,
)

router = APIRouter()
for module in (
    health,
    datasets,
    tasks,
    labels,
    annotators,
    suspects,
    model_versions,
    jobs,
    webknossos,
):
    router.routes.extend(module.router.routes)
