"""Registering datasets and turning a dataset row into its grid and patch source."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.tables import Dataset
from server.errors import Conflict, DatasetError, InvalidInput, NotFound
from server.pixels.grid import Grid, Vec3
from server.pixels.source import PatchSource, mag_name, parse_mag


@dataclass(frozen=True)
class BBox:
    offset: Vec3
    size: Vec3

    @classmethod
    def parse(cls, text: str) -> BBox:
        """``x,y,z,w,h,d`` in mag-1 voxels."""
        try:
            values = [int(v) for v in text.replace(" ", "").split(",")]
        except ValueError:
            raise InvalidInput(
                f"invalid bounding box {text!r}: expected x,y,z,w,h,d integers"
            ) from None
        if len(values) != 6:
            raise InvalidInput(f"invalid bounding box {text!r}: expected 6 numbers x,y,z,w,h,d")
        if any(v <= 0 for v in values[3:]):
            raise InvalidInput(f"invalid bounding box {text!r}: sizes must be positive")
        return cls((values[0], values[1], values[2]), (values[3], values[4], values[5]))

    def contains(self, other: BBox) -> bool:
        return all(
            other.offset[i] >= self.offset[i]
            and other.offset[i] + other.size[i] <= self.offset[i] + self.size[i]
            for i in range(3)
        )

    def __str__(self) -> str:
        return ",".join(str(v) for v in (*self.offset, *self.size))


def grid_of(dataset: Dataset) -> Grid:
    return Grid(
        offset=(dataset.bbox_x, dataset.bbox_y, dataset.bbox_z),
        size=(dataset.bbox_w, dataset.bbox_h, dataset.bbox_d),
        mag=parse_mag(dataset.mag),
        patch=dataset.patch_size,
        stride=dataset.stride,
    )


def open_source(dataset: Dataset) -> PatchSource:
    return PatchSource.open(dataset.path, layer=dataset.layer, mag=dataset.mag)


def sample_statistics(
    source: PatchSource, grid: Grid, *, n_patches: int, seed: int = 0
) -> tuple[float, float]:
    """Mean and standard deviation of the pixel values of a random sample of grid patches."""
    rng = np.random.default_rng(seed)
    n = min(n_patches, len(grid))
    indices = np.sort(rng.choice(len(grid), size=n, replace=False))
    patches = source.read_patches(grid.origins(indices), size_px=grid.patch).astype(np.float64)
    mean = float(patches.mean())
    std = float(patches.std())
    return mean, std if std > 1e-6 else 1.0


# Larger than any real datasource-properties.json (a few KB per layer), small enough to read.
MAX_PROPERTIES_BYTES = 4 * 1024 * 1024
PROPERTIES = "datasource-properties.json"


@dataclass(frozen=True)
class AllowedLocations:
    """Where datasets registered through the API may live, and every place they may make the
    service read: folders under ``roots`` (any folder when there are none) and URLs on the
    webKnossos servers ``hosts`` (``scheme://host[:port]``)."""

    roots: Sequence[Path] = ()
    hosts: Sequence[str] = ()

    def check(self, path: str) -> None:
        """Raise :class:`DatasetError` naming ``path`` (never the server's folders) when
        ``path`` is not allowed."""
        if _is_url(path):
            self._check_url(path, what=repr(path))
            return
        try:
            resolved = Path(path).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            raise DatasetError(f"{path!r} is not a usable dataset path") from None
        self._check_folder(resolved, what=repr(path))

    def check_dataset(self, path: str) -> None:
        """:meth:`check` the dataset ``path`` and, for a local one, every path and URL its
        ``datasource-properties.json`` names (layers, mags, attachments), before anything
        but that file is read."""
        self.check(path)
        if _is_url(path):
            return  # a webKnossos server's dataset: its server says where the data lies
        folder = Path(path).expanduser()
        properties = folder / PROPERTIES
        if not properties.is_file():
            return  # opening it says what is missing
        self._check_folder(properties.resolve(), what=f"{PROPERTIES} of {path!r}")
        if properties.stat().st_size > MAX_PROPERTIES_BYTES:
            raise DatasetError(f"{PROPERTIES} of {path!r} is larger than a dataset's can be")
        try:
            parsed = json.loads(properties.read_bytes())
        except (OSError, ValueError):
            raise DatasetError(f"{PROPERTIES} of {path!r} is not valid JSON") from None
        for where, value in _named_paths(parsed):
            what = f"{where} {value!r} in {PROPERTIES} of {path!r}"
            if _is_url(value):
                self._check_url(value, what=what)
                continue
            try:
                resolved = (folder / Path(value).expanduser()).resolve()
            except (OSError, RuntimeError, ValueError):
                raise DatasetError(f"{what} is not a usable path") from None
            self._check_folder(resolved, what=what)

    def _check_url(self, url: str, *, what: str) -> None:
        parts = urlsplit(url)
        origin = f"{parts.scheme.lower()}://{parts.netloc.lower()}"
        if parts.scheme.lower() not in ("http", "https") or origin not in self.hosts:
            raise DatasetError(
                f"{what} is not on a webKnossos server this service is configured for"
            )

    def _check_folder(self, resolved: Path, *, what: str) -> None:
        if self.roots and not any(resolved.is_relative_to(root) for root in self.roots):
            raise DatasetError(
                f"{what} is not inside a dataset folder this service may read "
                "(ARTIFACT_LOOP_DATASET_ROOTS)"
            )


def _is_url(path: str) -> bool:
    return "://" in path or path.startswith(("http:", "https:"))


def _named_paths(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """``(where, value)`` of every ``path`` or ``url`` string in a parsed
    ``datasource-properties.json``; ``where`` names it by layer (``layer 'color' mags[0]
    path``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("path", "url") and isinstance(value, str):
                yield f"{where} {key}".strip(), value
            elif key == "dataLayers" and isinstance(value, list):
                for layer in value:
                    name = layer.get("name") if isinstance(layer, dict) else None
                    yield from _named_paths(layer, f"layer {name!r}")
            else:
                yield from _named_paths(value, f"{where} {key}".strip())
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _named_paths(value, f"{where}[{i}]")


def register_dataset(
    session: Session,
    *,
    name: str,
    path: str,
    layer: str = "color",
    mag: str | int | Sequence[int] = 1,
    patch: int = 140,
    stride: int | None = None,
    bbox: BBox | None = None,
    stats_sample: int = 64,
    allowed: AllowedLocations | None = None,
) -> Dataset:
    """Register the dataset at ``path``. With ``allowed`` (requests from the API), only
    paths it allows are opened, and errors name the input, never what the server found."""
    name = name.strip()
    if not name:
        raise InvalidInput("dataset name must not be empty")
    if session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
        raise Conflict(f"a dataset named {name!r} already exists")
    if patch <= 0:
        raise InvalidInput("patch size must be positive")
    stride = stride or patch
    if stride <= 0:
        raise InvalidInput("stride must be positive")
    mag_vec = parse_mag(mag)
    if allowed is not None:
        allowed.check_dataset(str(path))
    try:
        opened = PatchSource.open(path, layer=layer, mag=mag_vec)
    except DatasetError as exc:
        if allowed is None or not str(exc).startswith("cannot open"):
            raise
        # the library's message may name resolved folders or internal hosts
        raise DatasetError(f"cannot open {str(path)!r} as a webKnossos dataset") from None
    with opened as source:
        layer_box = BBox(source.info.bbox_offset, source.info.bbox_size)
        box = bbox or layer_box
        if not layer_box.contains(box):
            raise DatasetError(
                f"bounding box {box} is not inside the layer's bounding box {layer_box}"
            )
        try:
            grid = Grid(offset=box.offset, size=box.size, mag=mag_vec, patch=patch, stride=stride)
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
        if len(grid) == 0:
            raise DatasetError(f"bounding box {box} holds no whole patch of {patch} px")
        try:
            mean, std = sample_statistics(source, grid, n_patches=stats_sample)
        except Exception as exc:  # the storage libraries raise many kinds
            # the library's message may name resolved folders or internal hosts
            reason = "" if allowed is not None else f": {' '.join(str(exc).split())[:300]}"
            raise DatasetError(f"cannot read the pixels of {str(path)!r}{reason}") from None
        dataset = Dataset(
            name=name,
            path=str(path),
            layer=layer,
            mag=mag_name(mag_vec),
            data_format=source.info.data_format,
            voxel_size=list(source.info.voxel_size),
            bbox_x=box.offset[0],
            bbox_y=box.offset[1],
            bbox_z=box.offset[2],
            bbox_w=box.size[0],
            bbox_h=box.size[1],
            bbox_d=box.size[2],
            patch_size=patch,
            stride=stride,
            norm_mean=mean,
            norm_std=std,
            settings={},
        )
    session.add(dataset)
    session.flush()
    return dataset


def list_datasets(session: Session) -> list[Dataset]:
    return list(session.scalars(select(Dataset).order_by(Dataset.id)))


def get_dataset(session: Session, ref: str | int) -> Dataset:
    """A dataset by id or by name."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        found = session.get(Dataset, int(ref))
        if found is not None:
            return found
    found = session.scalar(select(Dataset).where(Dataset.name == str(ref)))
    if found is None:
        raise NotFound(f"no dataset {ref!r}")
    return found
