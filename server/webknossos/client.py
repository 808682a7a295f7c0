"""The configured webKnossos server through the ``webknossos`` library: its context, its
refusals as errors that carry the server's own words, a dataset's link to a server dataset."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from server.db.tables import Dataset
from server.errors import ArtifactLoopError, InvalidInput, ServiceUnavailable
from server.settings import Settings
from server.wklib import ApiClientError, wk

DATASET_ID = re.compile(r"^[0-9a-f]{24}$")  # the server's ids are MongoDB-style ObjectIds
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")  # all a project name may contain
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


class WebknossosError(ArtifactLoopError):
    """The webKnossos server refused or could not be reached."""

    status_code = 502


def link_of(dataset: Dataset) -> dict[str, Any] | None:
    link = (dataset.settings or {}).get("webknossos")
    return link if isinstance(link, dict) and link.get("dataset_id") else None


def project_name(settings: Settings, dataset: Dataset) -> str:
    """``<prefix>-<dataset name>`` with every run of characters the server does not allow in
    a project name (anything but letters, digits, ``_`` and ``-``) made one ``_``."""
    name = _NAME_CHARS.sub("_", f"{settings.wk_project_prefix}-{dataset.name}").strip("_")
    return name[:100] or "artifact-loop"


def server_reason(text: str) -> str:
    """The server's own words from a library error: the ``messages`` of its JSON body (or the
    body itself), without the request boilerplate around them."""
    _, sep, body = text.partition(" with body")
    if not sep:
        return " ".join(line.strip() for line in text.splitlines() if line.strip())
    body = body.split(": ", 1)[1] if ": " in body else body
    body = body.strip()
    try:
        data = json.loads(body)
    except ValueError:
        return _page_text(body)[:500]
    messages = data.get("messages") if isinstance(data, dict) else None
    if isinstance(messages, list):
        said = [str(v) for m in messages if isinstance(m, dict) for v in m.values()]
        if said:
            return "; ".join(said)
    return body[:500]


def _page_text(body: str) -> str:
    """A body that is not JSON (a proxy's or a crashed server's answer) in words: an HTML
    page by its title, else its text without markup, on one line."""
    title = _TITLE.search(body)
    text = title.group(1) if title else _TAG.sub(" ", body)
    return " ".join(html.unescape(text).split())


def refusal(exc: Exception) -> str:
    """A library error as ``<METHOD> <route> answered <status>: <the server's words>``."""
    text = str(exc)
    status = re.search(r"response status (\d+)", text)
    request = re.search(r"performing a (\w+) request for URL (\S+)", text)
    where = f"{request.group(1)} {request.group(2).split('?')[0].rstrip('.')} " if request else ""
    code = f"answered {status.group(1)}: " if status else ""
    return f"{where}{code}{server_reason(text)}"


def status_of(exc: Exception) -> int | None:
    """The HTTP status of a library error, when it carries one."""
    found = re.search(r"response status (\d+)", str(exc))
    return int(found.group(1)) if found else None


@contextmanager
def server(settings: Settings) -> Iterator[None]:
    """The library's context for the configured server, with its failures as clear errors."""
    if not settings.wk_url or settings.wk_token is None:
        raise InvalidInput(
            "no webKnossos server configured: set ARTIFACT_LOOP_WK_URL and ARTIFACT_LOOP_WK_TOKEN"
        )
    url = settings.wk_url.rstrip("/")
    try:
        with wk.webknossos_context(
            url=url, token=settings.wk_token.get_secret_value(), timeout=settings.wk_timeout_s
        ):
            yield
    except httpx.TransportError as exc:
        raise ServiceUnavailable(
            f"webKnossos server {url} is unreachable ({type(exc).__name__})"
        ) from None
    except ApiClientError as exc:
        text = str(exc)
        if "status 401" in text or "status 403" in text:
            raise WebknossosError(
                f"webKnossos server {url} refused the token (401/403): check ARTIFACT_LOOP_WK_TOKEN"
                f" ({server_reason(text)})"
            ) from None
        raise WebknossosError(f"webKnossos server {url}: {refusal(exc)}") from None
