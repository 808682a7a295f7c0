"""What a dense prediction computes and where: its plan (output, mags, threshold, region,
QC rate) and the region cut into shard-aligned chunks."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from server.errors import InvalidInput
from server.pixels.source import Vec3, parse_mag
from server.predictions.qc import DEFAULT_FIELD_GRID, DEFAULT_FIELD_RATE, parse_grid

PROB_LAYER = "artifact_prob"
MASK_LAYER = "artifact_mask"
UNCERTAINTY_LAYER = "artifact_uncertainty"  # where the classifier is unsure: label there next
LAYERS = (PROB_LAYER, MASK_LAYER, UNCERTAINTY_LAYER)
DEFAULT_STRIDE = 32
STRIDES = (16, 32, 64)  # multiples of the encoder's total stride and powers of two (mags)
BLOCK_CELLS = 64  # shard width and height in cells; a chunk job writes one shard column
BLOCK_SECTIONS = 8
ENCODER_SCALE = 16
DEFAULT_REIMAGE_RATE = 0.5  # a section with more of its cells above threshold: re-image it


@dataclass(frozen=True)
class Plan:
    """Where and how a prediction is computed; all JSON-serialisable for the job row."""

    out_path: str
    source_mag: tuple[int, int, int]
    out_mag: tuple[int, int, int]
    stride: int  # pixels at the source mag between neighbouring cells
    patch: int
    threshold: float
    region_offset: tuple[int, int, int]  # mag-1 voxels
    region_size: tuple[int, int, int]
    dataset_offset: tuple[int, int, int]  # mag-1 voxels, for clamping reads
    dataset_size: tuple[int, int, int]
    block_sections: int = BLOCK_SECTIONS  # sections per chunk job (and per shard)
    reimage_rate: float = DEFAULT_REIMAGE_RATE  # fraction of a section's cells above threshold
    publish: bool = True  # to the webKnossos server, when one is configured and linked
    field_grid: tuple[int, int] = DEFAULT_FIELD_GRID  # QC fields per section: columns, rows
    field_size: tuple[int, int] | None = None  # the dataset's tile size (mag-1), if it has one
    field_rate: float = DEFAULT_FIELD_RATE  # fraction of a field's cells above threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in data.items()
                if k in cls.__dataclass_fields__
            }
        )

    @property
    def cell_px(self) -> tuple[int, int]:
        """A cell's width and height in mag-1 voxels."""
        return self.out_mag[0], self.out_mag[1]

    def cell_range(self) -> tuple[int, int, int, int, int, int]:
        """The region as cells: x0, y0, z0, x1, y1, z1 (half-open; z in sections)."""
        cw, ch = self.cell_px
        ox, oy, oz = self.region_offset
        sx, sy, sz = self.region_size
        return (
            ox // cw,
            oy // ch,
            oz,
            -(-(ox + sx) // cw),
            -(-(oy + sy) // ch),
            oz + sz,
        )


def validate_params(dataset: Any, params: dict[str, Any]) -> None:
    """Reject bad predict parameters before a job is queued (raises :class:`InvalidInput`)."""
    stride = params.get("stride", DEFAULT_STRIDE)
    if not isinstance(stride, int) or stride not in STRIDES:
        raise InvalidInput(f"stride must be one of {', '.join(map(str, STRIDES))} pixels")
    threshold = params.get("threshold")
    if threshold is not None and (
        not isinstance(threshold, int | float) or not 0.0 < float(threshold) < 1.0
    ):
        raise InvalidInput("threshold must be a number between 0 and 1")
    rate = params.get("reimage_rate")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 < float(rate) <= 1.0
    ):
        raise InvalidInput("reimage_rate must be a number above 0 and at most 1")
    field_rate = params.get("field_rate")
    if field_rate is not None and (
        isinstance(field_rate, bool)
        or not isinstance(field_rate, int | float)
        or not 0.0 < float(field_rate) <= 1.0
    ):
        raise InvalidInput("field_rate must be a number above 0 and at most 1")
    grid = params.get("field_grid")
    if grid is not None:
        _grid(grid)
    tile = (getattr(dataset, "settings", None) or {}).get("tile_size")
    if tile is not None and not (
        isinstance(tile, list | tuple)
        and len(tile) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in tile)
    ):
        raise InvalidInput("the dataset's tile_size must be two positive integers (mag-1 voxels)")
    if not isinstance(params.get("publish", True), bool):
        raise InvalidInput("publish must be true or false")
    sections = params.get("sections_per_chunk", BLOCK_SECTIONS)
    if not isinstance(sections, int) or not 1 <= sections <= 64:
        raise InvalidInput("sections_per_chunk must be an integer from 1 to 64")
    bbox = params.get("bbox")
    if bbox is not None:
        _region(dataset, bbox)


def _grid(value: Any) -> tuple[int, int]:
    """A field grid from ``"4x4"`` or ``[4, 4]``."""
    try:
        if isinstance(value, str):
            return parse_grid(value)
        if (
            isinstance(value, list | tuple)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            return parse_grid(f"{value[0]}x{value[1]}")
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    raise InvalidInput('field_grid must be <columns>x<rows>, e.g. "4x4", or [columns, rows]')


def _region(dataset: Any, bbox: Any) -> tuple[Vec3, Vec3]:
    offset = (int(dataset.bbox_x), int(dataset.bbox_y), int(dataset.bbox_z))
    size = (int(dataset.bbox_w), int(dataset.bbox_h), int(dataset.bbox_d))
    if bbox is None:
        return offset, size
    if (
        not isinstance(bbox, list | tuple)
        or len(bbox) != 6
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in bbox)
    ):
        raise InvalidInput(
            "bbox must be six integers: x, y, z, width, height, depth (mag-1 voxels)"
        )
    x, y, z, w, h, d = bbox
    if w <= 0 or h <= 0 or d <= 0:
        raise InvalidInput("bbox width, height and depth must be positive")
    end = (x + w, y + h, z + d)
    if any(v < o for v, o in zip((x, y, z), offset, strict=True)) or any(
        e > o + s for e, o, s in zip(end, offset, size, strict=True)
    ):
        raise InvalidInput(
            f"bbox {list(bbox)} is not inside the dataset "
            f"(offset {list(offset)}, size {list(size)})"
        )
    return (x, y, z), (w, h, d)


def make_plan(
    dataset: Any,
    params: dict[str, Any],
    *,
    out_root: Path,
    threshold: float,
    field_grid: tuple[int, int] = DEFAULT_FIELD_GRID,
) -> Plan:
    """The plan of a prediction; ``field_grid`` is the service's default QC grid (a job's
    ``field_grid`` overrides it; the dataset's ``tile_size`` setting replaces both)."""
    validate_params(dataset, params)
    tile = (getattr(dataset, "settings", None) or {}).get("tile_size")
    stride = int(params.get("stride", DEFAULT_STRIDE))
    mag = parse_mag(dataset.mag)
    offset, size = _region(dataset, params.get("bbox"))
    return Plan(
        out_path=str(out_root / f"{dataset.name}_artifact_pred"),
        source_mag=mag,
        out_mag=(stride * mag[0], stride * mag[1], mag[2]),
        stride=stride,
        patch=int(dataset.patch_size),
        threshold=float(params.get("threshold", threshold)),
        region_offset=offset,
        region_size=size,
        dataset_offset=(int(dataset.bbox_x), int(dataset.bbox_y), int(dataset.bbox_z)),
        dataset_size=(int(dataset.bbox_w), int(dataset.bbox_h), int(dataset.bbox_d)),
        block_sections=int(params.get("sections_per_chunk", BLOCK_SECTIONS)),
        reimage_rate=float(params.get("reimage_rate", DEFAULT_REIMAGE_RATE)),
        publish=bool(params.get("publish", True)),
        field_grid=_grid(params["field_grid"]) if "field_grid" in params else field_grid,
        field_size=(int(tile[0]), int(tile[1])) if tile else None,
        field_rate=float(params.get("field_rate", DEFAULT_FIELD_RATE)),
    )


def chunks(plan: Plan) -> list[tuple[int, int, int, int, int, int]]:
    """The region's cells cut along shard borders: (x0, y0, z0, x1, y1, z1) per chunk."""
    x0, y0, z0, x1, y1, z1 = plan.cell_range()
    out = []
    depth = plan.block_sections
    for bz in range(z0 // depth, -(-z1 // depth)):
        for by in range(y0 // BLOCK_CELLS, -(-y1 // BLOCK_CELLS)):
            for bx in range(x0 // BLOCK_CELLS, -(-x1 // BLOCK_CELLS)):
                out.append(
                    (
                        max(x0, bx * BLOCK_CELLS),
                        max(y0, by * BLOCK_CELLS),
                        max(z0, bz * depth),
                        min(x1, (bx + 1) * BLOCK_CELLS),
                        min(y1, (by + 1) * BLOCK_CELLS),
                        min(z1, (bz + 1) * depth),
                    )
                )
    return out
