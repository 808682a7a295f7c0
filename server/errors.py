"""Typed errors of the service. Each carries the HTTP status it maps to, in one place.

The CLI prints ``str(error)`` on one line; the API returns ``{"detail": str(error)}``.
"""

from __future__ import annotations


class ArtifactLoopError(Exception):
    """Base of every error a user can cause and fix."""

    status_code = 400


class InvalidInput(ArtifactLoopError):
    status_code = 422


class NotFound(ArtifactLoopError):
    status_code = 404


class Conflict(ArtifactLoopError):
    status_code = 409


class PayloadTooLarge(ArtifactLoopError):
    status_code = 413


class Unauthorized(ArtifactLoopError):
    status_code = 401


class Forbidden(ArtifactLoopError):
    status_code = 403


class DatasetError(InvalidInput):
    """A dataset cannot be opened or does not have what was asked for."""


class ServiceUnavailable(ArtifactLoopError):
    status_code = 503
