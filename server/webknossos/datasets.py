"""Datasets on the webKnossos server: which server dataset a project dataset is, and
publishing a local dataset there next to it (its EM layer linked, not copied)."""

from __future__ import annotations

import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import InvalidInput
from server.settings import Settings
from server.webknossos.sync import DATASET_ID, link_of, server
from server.wklib import wk

_URL_ID = re.compile(r"/datasets/(?:[^/]*-)?([0-9a-f]{24})(?:/|$)")


def server_dataset_id(dataset: Any) -> str | None:
    """The server's id of the dataset: its webKnossos link, or the id in the URL it was
    registered by (``https://host/datasets/<name>-<id>/view``)."""
    link = link_of(dataset)
    if link is not None and DATASET_ID.fullmatch(str(link["dataset_id"])):
        return str(link["dataset_id"])
    match = _URL_ID.search(str(getattr(dataset, "path", "")))
    return match.group(1) if match else None


@dataclass(frozen=True)
class Published:
    """A dataset on the server, as the server describes it after the upload."""

    dataset_id: str
    name: str
    url: str
    layers: list[str]
    linked: dict[str, str]  # layer -> the server dataset it is linked from

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_id": self.dataset_id,
            "name": self.name,
            "url": self.url,
            "layers": self.layers,
            "linked": self.linked,
        }


def publish_dataset(
    path: Path,
    *,
    settings: Settings,
    name: str,
    layers: list[str],
    em_dataset_id: str,
    em_layer: str,
) -> Published:
    """Upload ``layers`` of the local dataset at ``path`` as the server dataset ``name``, with
    the EM layer ``em_layer`` of the server dataset ``em_dataset_id`` linked into it: opened
    in webKnossos, the predictions lie over the EM. Only the layers travel, not the files
    beside them (chunk summaries, reports)."""
    with server(settings):
        em = wk.RemoteDataset.open(dataset_id=em_dataset_id)
        if em_layer not in em.layers:
            raise InvalidInput(
                f"the webKnossos dataset {em.name!r} ({em_dataset_id}) has no layer "
                f"{em_layer!r} (it has {', '.join(sorted(em.layers)) or 'none'})"
            )
        local = wk.Dataset.open(path)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the library's progress and info warnings
            copy = local.shallow_copy_dataset(
                Path(tmp) / "upload",
                name=name,
                layers_to_ignore=[n for n in local.layers if n not in layers],
            )
            remote = copy.upload(
                new_dataset_name=name,
                layers_to_link=[wk.LayerToLink(dataset_id=em_dataset_id, layer_name=em_layer)],
            )
        return Published(
            dataset_id=remote.dataset_id,
            name=remote.name,
            url=remote.url,
            layers=sorted(remote.layers),
            linked={em_layer: em_dataset_id},
        )
