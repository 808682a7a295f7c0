"""Datasets on the webKnossos server: which server dataset a project dataset is, and
publishing a local dataset there next to it: its layers' voxels uploaded, the EM layer linked
from the server's own dataset (not copied)."""

from __future__ import annotations

import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from server.errors import InvalidInput
from server.settings import Settings
from server.webknossos.client import WebknossosError
from server.webknossos.sync import DATASET_ID, link_of, server
from server.wklib import wk

_URL_ID = re.compile(r"/datasets/(?:[^/]*-)?([0-9a-f]{24})(?:/|$)")
# the server's rule for dataset names (DatasetService.assertValidDatasetName of
# scalableminds/webknossos): only these characters, not starting with a dot, three or more
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def server_dataset_name(name: str) -> str:
    """``name`` as the server accepts it: every run of other characters one ``_``, no leading
    dot, at least three characters ("brain1 run 3.v2_artifact_pred" ->
    "brain1_run_3.v2_artifact_pred")."""
    cleaned = _NOT_IN_NAME.sub("_", name).lstrip("._")
    return cleaned if len(cleaned) >= 3 else f"{cleaned}_dataset".lstrip("_")


def _check_name(name: str) -> None:
    """Ask the server first (``GET /datasets/<name>/isValidNewName``): a refused name fails
    here with the server's words, before anything is uploaded."""
    from webknossos.client.context import _get_api_client

    answer = _get_api_client().dataset_is_valid_new_name(dataset_name=name)
    if answer.is_valid:
        return
    errors = answer.errors or []
    # the server sends one message string; the library's model reads it as a list of letters
    said = "".join(errors) if all(len(e) <= 1 for e in errors) else "; ".join(errors)
    raise WebknossosError(f"webKnossos refuses the dataset name {name!r}: {said or 'no reason'}")


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
    """Upload ``layers`` of the local dataset at ``path``, their voxels included, as the
    server dataset ``name`` (made a name the server accepts), with the EM layer ``em_layer``
    of the server dataset ``em_dataset_id`` linked into it: opened in webKnossos, the
    predictions lie over the EM. Only the layers travel, copied into a folder of their own,
    not the files beside them (chunk summaries, reports) and no path of this machine."""
    name = server_dataset_name(name)
    with server(settings):
        em = wk.RemoteDataset.open(dataset_id=em_dataset_id)
        if em_layer not in em.layers:
            raise InvalidInput(
                f"the webKnossos dataset {em.name!r} ({em_dataset_id}) has no layer "
                f"{em_layer!r} (it has {', '.join(sorted(em.layers)) or 'none'})"
            )
        _check_name(name)
        local = wk.Dataset.open(path)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the library's progress and info warnings
            copy = wk.Dataset(Path(tmp) / name, voxel_size=local.voxel_size, name=name)
            for layer in layers:
                copy.add_layer_as_copy(local.get_layer(layer))
            try:
                remote = copy.upload(
                    new_dataset_name=name,
                    layers_to_link=[wk.LayerToLink(dataset_id=em_dataset_id, layer_name=em_layer)],
                )
            except Exception as exc:  # the library raises a bare Exception for some refusals
                if isinstance(exc, httpx.TransportError) or type(exc).__module__.startswith(
                    "webknossos.client.api_client"
                ):
                    raise  # the server context turns these into the server's words
                raise WebknossosError(f"uploading {name!r} to webKnossos failed: {exc}") from None
        return Published(
            dataset_id=remote.dataset_id,
            name=remote.name,
            url=remote.url,
            layers=sorted(remote.layers),
            linked={em_layer: em_dataset_id},
        )
