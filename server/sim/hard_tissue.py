"""The hard real-tissue benchmark's datasets: many patch-sized artifacts painted into real EM
sections by one of two independent painters, and the real defects the volumes already hold.

Each artifact is painted about one 140 px patch in size around the centre of a patch chosen
for it (at most one per patch, with a jitter that lets it spill into a neighbour), kinds in
shuffled rounds so none has more than one artifact more than another, a third of them faint.
A patch is an artifact when the painted footprint covers more than 2% of it
(:data:`server.sim.synth.MIN_COVERAGE`). ``painter="generator"`` paints the synthetic
generator's kinds (:mod:`server.sim.artifacts`) inside a window of one patch around the
chosen centre; ``painter="msem"`` paints :mod:`server.sim.msem_artifacts`, written apart from it.

Real defects (a blank section, the tiles around a hole) stay in the volume, moved into the
held-out sections and labelled ``other``; ``truth.json`` beside the ground truth says, per
row of ``ground_truth.csv``, which painted artifact (or real defect) covers the patch, its
kind and whether it is faint, so the benchmark reports painted and real ones apart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.vocab import artifact_type_id
from server.errors import InvalidInput
from server.sim import artifacts as generator
from server.sim import msem_artifacts as msem
from server.sim.real_tissue import (
    RealVolume,
    artifact_counts,
    as_sections,
    balanced_kinds,
    empty_folder_and_shape,
    held_out_sections,
    read_volume_member,
    write_layers,
)
from server.sim.synth import (
    KINDS,
    MIN_COVERAGE,
    PATCH,
    SynthSummary,
    ground_truth_rows,
    patch_tiles,
    write_ground_truth,
)

PAINTER_NAMES = ("generator", "msem")
REAL_DEFECT = "real-defect"
REAL_TYPE = "other"  # the artifact type the real defects are labelled with
WINDOW = PATCH  # the generator's artifacts are painted inside this square about a centre


def painter_kinds(painter: str) -> tuple[str, ...]:
    if painter == "generator":
        return KINDS
    if painter == "msem":
        return msem.MSEM_KINDS
    raise InvalidInput(f"unknown painter {painter!r}; use {', '.join(PAINTER_NAMES)}")


def fetch_with_defects(
    volume: RealVolume, cache: Path, *, say: Callable[[str], None] = lambda _m: None
) -> tuple[np.ndarray, np.ndarray]:
    """The whole volume as ``(z, y, x)`` uint8 sections, real defects included, and where
    they are: a blank section entirely, a 2-D image's ``exclude`` boxes in the tiles they touch."""
    raw = read_volume_member(volume, cache, say=say)
    sections = as_sections(raw, tile=volume.tile)
    defects = np.zeros(sections.shape, dtype=bool)
    if raw.ndim == 2 and volume.tile is not None:
        th, tw = volume.tile
        nx = raw.shape[1] // tw
        for i in range(len(sections)):
            ty, tx = divmod(i, nx)
            for y0, x0, y1, x1 in volume.exclude:
                ys = slice(max(y0 - ty * th, 0), max(min(y1 - ty * th, th), 0))
                xs = slice(max(x0 - tx * tw, 0), max(min(x1 - tx * tw, tw), 0))
                defects[i, ys, xs] = True
    blank = sections.reshape(len(sections), -1).std(axis=1) < 1.0
    defects[blank] = True
    return sections, defects


def defects_into_test(
    sections: np.ndarray, defects: np.ndarray, *, test_every: int
) -> tuple[np.ndarray, np.ndarray]:
    """The same sections, reordered so that every one with a real defect is a held-out
    section (swapped with a defect-free held-out one): only the test set holds real defects."""
    order = np.arange(len(sections))
    test = held_out_sections(len(sections), test_every)
    has = defects.reshape(len(defects), -1).any(axis=1)
    free_test = [int(i) for i in np.flatnonzero(test & ~has)]
    for i in np.flatnonzero(~test & has):
        if not free_test:
            raise InvalidInput("more sections with real defects than held-out sections")
        j = free_test.pop(0)
        order[i], order[j] = order[j], order[i]
    return sections[order], defects[order]


@dataclass
class Painted:
    """One section after painting: the artifact type per pixel (0 clean), which artifact
    covers each pixel (0 none, -1 a real defect), and the artifacts' kinds and faintness."""

    image: np.ndarray
    types: np.ndarray
    instance: np.ndarray
    kinds: list[str]
    faint: list[bool]


def paint_section(
    section: np.ndarray,
    *,
    painter: str,
    kinds: list[str],
    faint: list[bool],
    rng: np.random.Generator,
    tile_ids: np.ndarray,
    defects: np.ndarray | None = None,
    first_id: int = 1,
) -> Painted:
    """Paint ``kinds`` into a ``(y, x)`` section, each around the centre of its own patch
    (jittered by up to a third of a patch), and mark the real ``defects`` as such."""
    h, w = section.shape
    image = section.astype(np.float32)
    types = np.zeros((h, w), np.uint8)
    instance = np.zeros((h, w), np.int32)
    if defects is not None and defects.any():
        types[defects] = artifact_type_id(REAL_TYPE)
        instance[defects] = -1
    n_y, n_x = h // PATCH, w // PATCH
    cells = rng.permutation(n_y * n_x)[: len(kinds)]
    if len(cells) < len(kinds):
        raise InvalidInput(f"{len(kinds)} artifacts do not fit into {n_y * n_x} patches")
    for k, (kind, is_faint, cell) in enumerate(zip(kinds, faint, cells, strict=False)):
        cy = (cell // n_x + 0.5) * PATCH + rng.uniform(-1, 1) * PATCH / 3
        cx = (cell % n_x + 0.5) * PATCH + rng.uniform(-1, 1) * PATCH / 3
        y0, x0 = (
            int(np.clip(cy - WINDOW / 2, 0, max(h - WINDOW, 0))),
            int(np.clip(cx - WINDOW / 2, 0, max(w - WINDOW, 0))),
        )
        ys, xs = slice(y0, min(y0 + WINDOW, h)), slice(x0, min(x0 + WINDOW, w))
        crop = image[ys, xs].copy()
        if painter == "msem":
            footprint = msem.PAINTERS[kind](crop, rng, cy - y0, cx - x0, is_faint)
            type_name = msem.TYPE_OF[kind]
        else:
            canvas = generator.Canvas(
                image=crop, labels=np.zeros(crop.shape, np.uint8), tile_ids=tile_ids[ys, xs],
                rng=rng,
            )  # fmt: skip
            generator.PAINTERS[kind](canvas, is_faint)
            footprint = canvas.labels > 0
            type_name = kind
        image[ys, xs] = crop
        types[ys, xs][footprint] = artifact_type_id(type_name)
        instance[ys, xs][footprint] = first_id + k
    np.clip(image, 0, 255, out=image)
    return Painted(image, types, instance, list(kinds), list(faint))


def patch_owners(instance: np.ndarray) -> np.ndarray:
    """Per grid patch (row-major), the artifact covering the most of it (0 none, -1 real)."""
    tiles = patch_tiles(instance)
    owners = np.zeros(len(tiles), np.int64)
    for i, tile in enumerate(tiles):
        ids, counts = np.unique(tile[tile != 0], return_counts=True)
        if len(ids) and counts.sum() >= MIN_COVERAGE * PATCH * PATCH:
            owners[i] = int(ids[np.argmax(counts)])
    return owners


def make_hard_dataset(
    sections: np.ndarray,
    out_dir: Path | str,
    *,
    painter: str,
    seed: int,
    artifacts_per_section: float,
    defects: np.ndarray | None = None,
    voxel_size: tuple[int, int, int] = (4, 4, 40),
    test_every: int = 3,
) -> SynthSummary:
    """Paint the sections, write the dataset (``color``, ``artifact_mask``,
    ``ground_truth.csv``) and ``truth.json``: per ground-truth row the artifact that makes the
    patch one (0 none, -1 a real defect), and per artifact its kind, faintness and section."""
    start = time.perf_counter()
    kinds_all = painter_kinds(painter)
    out, (depth, height, width) = empty_folder_and_shape(out_dir, sections)
    rng = np.random.default_rng([seed, 21])
    beams = generator.BeamFields(np.random.default_rng([seed, 22]), width=max(height, width))
    counts = artifact_counts(
        np.random.default_rng([seed, 23]), depth=depth, per_section=artifacts_per_section,
        test_every=test_every,
    )  # fmt: skip
    # at most one artifact per patch: a section takes no more than half its patches
    counts = np.minimum(counts, (height // PATCH) * (width // PATCH) // 2)
    kinds = balanced_kinds(np.random.default_rng([seed, 24]), kinds_all, int(counts.sum()))
    n_faint = round(len(kinds) * msem.FAINT_SHARE)
    faint = np.random.default_rng([seed, 25]).permutation(len(kinds)) < n_faint
    image = np.empty((width, height, depth), np.uint8)  # webKnossos order (x, y, z)
    mask = np.empty((width, height, depth), np.uint8)
    rows: list[tuple[int, int, int, int, int, str, str]] = []
    per_type: dict[str, int] = {}
    owners: list[int] = []
    artifacts: list[dict[str, object]] = []
    next_id = 1
    for z in range(depth):
        n = int(counts[z])
        painted = paint_section(
            sections[z, :height, :width], painter=painter, kinds=kinds[next_id - 1 : next_id - 1 + n],
            faint=[bool(f) for f in faint[next_id - 1 : next_id - 1 + n]], rng=rng,
            tile_ids=beams.section(z)[0][:height, :width],
            defects=None if defects is None else defects[z, :height, :width], first_id=next_id,
        )  # fmt: skip
        artifacts.extend(
            {"id": next_id + k, "kind": kind, "faint": f, "z": z}
            for k, (kind, f) in enumerate(zip(painted.kinds, painted.faint, strict=True))
        )
        next_id += n
        image[:, :, z] = np.rint(painted.image).astype(np.uint8).T
        mask[:, :, z] = painted.types.T
        rows.extend(ground_truth_rows(painted.types, z=z, per_type=per_type))
        owners.extend(int(o) for o in patch_owners(painted.instance))
    write_layers(out, image=image, mask=mask, voxel_size=voxel_size)
    truth = {
        "painter": painter,
        "seed": seed,
        "test_every": test_every,
        "owner": owners,
        "artifacts": artifacts,
    }
    (out / "truth.json").write_text(json.dumps(truth))
    injected = {k: sum(1 for a in artifacts if a["kind"] == k) for k in kinds_all}
    return write_ground_truth(
        out, rows, started=start, per_type=per_type, injected=injected, n_subtle=int(n_faint),
        shape=(width, height, depth),
    )  # fmt: skip


def describe_hard(summary: SynthSummary) -> dict[str, object]:
    """Sizes of a built dataset: patches, artifact patches (painted and real), prevalence, and
    the painted artifacts and artifact patches in the held-out sections."""
    truth = json.loads((summary.path / "truth.json").read_text())
    owner = np.asarray(truth["owner"])
    per_section = len(owner) // max(1, summary.shape[2])
    z = np.arange(len(owner)) // max(1, per_section)
    test = held_out_sections(summary.shape[2], truth["test_every"])[z]
    painted = owner > 0
    return {
        "painter": truth["painter"],
        "patches": len(owner),
        "artifact_patches": int(summary.n_artifact_patches),
        "painted_patches": int(painted.sum()),
        "real_defect_patches": int((owner < 0).sum()),
        "prevalence_painted": round(float(painted.mean()), 4),
        "artifacts_painted": len(truth["artifacts"]),
        "faint": int(sum(1 for a in truth["artifacts"] if a["faint"])),
        "test_patches": int(test.sum()),
        "test_painted_patches": int((painted & test).sum()),
        "test_artifacts": len(np.unique(owner[painted & test])),
        "test_real_defect_patches": int(((owner < 0) & test).sum()),
        "artifacts_by_kind": summary.n_artifacts,
    }
