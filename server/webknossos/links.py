"""Links into webKnossos: the dataset's view URL with the position of a patch centre."""

from __future__ import annotations

from urllib.parse import quote

from server.db.tables import Dataset
from server.pixels.source import is_webknossos_url, parse_mag
from server.webknossos.sync import link_of


def dataset_view_url(dataset: Dataset, *, server: str | None) -> str | None:
    """The dataset's page on its webKnossos server, or ``None`` when it has none: a dataset
    registered by its URL keeps that URL; a local one needs a configured server and a link
    (``PUT /datasets/{id}/webknossos``)."""
    if is_webknossos_url(dataset.path):
        url = dataset.path.split("#", 1)[0].rstrip("/")
        return url if url.endswith("/view") else url + "/view"
    link = link_of(dataset)
    if not server or link is None:
        return None
    return f"{server.rstrip('/')}/datasets/{quote(str(link['dataset_id']), safe='/-_.~')}/view"


def position_url(
    dataset: Dataset, *, server: str | None, x: int, y: int, z: int, w: int, h: int
) -> str | None:
    """The view URL centred on the patch ``(x, y, z, w, h)`` (mag-1 voxels), zoomed so the
    patch's mag is shown at one screen pixel per voxel: ``#x,y,z,mode,zoom`` (mode 0 is the
    orthogonal view)."""
    base = dataset_view_url(dataset, server=server)
    if base is None:
        return None
    zoom = max(parse_mag(dataset.mag)[:2])
    return f"{base}#{x + w // 2},{y + h // 2},{z},0,{zoom:.1f}"
