"""Registering datasets and turning a dataset row into its grid and patch source."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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


@dataclass(frozen=True)
class AllowedLocations:
    """Where datasets registered through the API may live: folders under ``roots`` (any
    folder when there are none) and URLs on the webKnossos servers ``hosts``
    (``scheme://host[:port]``)."""

    roots: Sequence[Path] = ()
    hosts: Sequence[str] = ()

    def check(self, path: str) -> None:
        """Raise :class:`DatasetError` naming ``path`` (never the server's folders) when
        ``path`` is not allowed."""
        if "://" in path or path.startswith(("http:", "https:")):
            parts = urlsplit(path)
            origin = f"{parts.scheme.lower()}://{parts.netloc.lower()}"
            if parts.scheme.lower() not in ("http", "https") or origin not in self.hosts:
                raise DatasetError(
                    f"{path!r} is not on a webKnossos server this service is configured for"
                )
            return
        if not self.roots:
            return
        try:
            resolved = Path(path).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            raise DatasetError(f"{path!r} is not a usable dataset path") from None
        if not any(resolved.is_relative_to(root) for root in self.roots):
            raise DatasetError(
                f"{path!r} is not inside a dataset folder this service may read "
                "(ARTIFACT_LOOP_DATASET_ROOTS)"
            )


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
        allowed.check(str(path))
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
        mean, std = sample_statistics(source, grid, n_patches=stats_sample)
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
