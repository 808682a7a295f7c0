"""The REST API under ``/api/v1``: one router per resource."""

from fastapi import APIRouter

from server.api import datasets, health, jobs, labels, model_versions, tasks, webknossos

router = APIRouter()
for module in (health, datasets, tasks, labels, model_versions, jobs, webknossos):
    router.include_router(module.router)
