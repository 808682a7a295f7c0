"""Per-patch arrays of a scoring run, kept on disk beside the model (never as database rows).

An autoencoder's features (reconstruction error as a robust z-score, embedding) depend only on
that version: they are computed once, in chunks of the grid, as ``recon-NNNNNN.npy`` and
``embed-NNNNNN.npy`` memory-mappable files. A classifier's scores of its candidates are
``chunk-NNNNNN.npz`` files of a few thousand patches each, written by a scoring job into a
folder of its own and made current only once every chunk is there (:func:`switch_scores`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from server.settings import Settings
from server.versions.service import model_dir


def features_dir(settings: Settings, *, dataset_id: int, version_id: int) -> Path:
    return model_dir(settings, dataset_id=dataset_id, version_id=version_id) / "features"


CURRENT_SCORES = "current"  # names the folder of a version's complete scores


def scores_dir(settings: Settings, *, dataset_id: int, version_id: int) -> Path:
    """The folder of a classifier version's complete scores: the one the last scoring that
    finished switched to, or, before any switch (older stores), ``scores`` itself."""
    root = model_dir(settings, dataset_id=dataset_id, version_id=version_id) / "scores"
    current = root / CURRENT_SCORES
    return root / current.read_text().strip() if current.is_file() else root


def scoring_dir(settings: Settings, *, dataset_id: int, version_id: int, job_id: int) -> Path:
    """Where scoring job ``job_id`` writes its chunks: read by nobody until they are all
    there, so a scoring cancelled or failed half-way leaves the scores before it whole."""
    root = model_dir(settings, dataset_id=dataset_id, version_id=version_id) / "scores"
    return root / f"job-{job_id}"


def switch_scores(settings: Settings, *, dataset_id: int, version_id: int, job_id: int) -> None:
    """Make scoring job ``job_id``'s chunks the version's scores (one atomic rename), then
    delete the scores they replace; a later scoring still under way keeps its folder."""
    new = scoring_dir(settings, dataset_id=dataset_id, version_id=version_id, job_id=job_id)
    _write_atomic(new.parent / CURRENT_SCORES, new.name.encode())
    for old in new.parent.iterdir():
        if old.is_dir() and old.name.startswith("job-") and int(old.name[4:]) < job_id:
            shutil.rmtree(old, ignore_errors=True)
        elif old.suffix in (".npz", ".npy"):  # scores of older stores, beside the pointer
            old.unlink(missing_ok=True)


class AEFeatures:
    """An autoencoder version's features of every grid patch, read chunk by chunk."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def plan(self, *, patches: int, chunk_patches: int) -> int:
        """Record the layout before chunks are written; the number of chunks."""
        self.folder.mkdir(parents=True, exist_ok=True)
        chunks = -(-patches // chunk_patches)
        meta = {"patches": patches, "chunk_patches": chunk_patches, "chunks": chunks}
        _write_atomic(self.folder / "meta.json", json.dumps(meta).encode())
        return chunks

    @property
    def meta(self) -> dict[str, int]:
        return dict(json.loads((self.folder / "meta.json").read_text()))

    def complete(self) -> bool:
        if not (self.folder / "meta.json").exists():
            return False
        return all(
            (self.folder / f"embed-{c:06d}.npy").exists() for c in range(self.meta["chunks"])
        )

    def write_chunk(self, chunk: int, *, recon: np.ndarray, embedding: np.ndarray) -> None:
        for name, array in (("recon", recon.astype(np.float32)), ("embed", embedding)):
            tmp = self.folder / f".{name}-{chunk:06d}.tmp.npy"
            np.save(tmp, array)
            os.replace(tmp, self.folder / f"{name}-{chunk:06d}.npy")

    def _chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.load(self.folder / f"recon-{chunk:06d}.npy", mmap_mode="r"),
            np.load(self.folder / f"embed-{chunk:06d}.npy", mmap_mode="r"),
        )

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reconstruction errors and embeddings of grid ``indices`` (any order)."""
        size = self.meta["chunk_patches"]
        indices = np.asarray(indices, dtype=np.int64)
        recon = np.empty(len(indices), dtype=np.float32)
        embed: np.ndarray | None = None
        chunk_of = indices // size
        for chunk in np.unique(chunk_of):
            where = np.nonzero(chunk_of == chunk)[0]
            r, e = self._chunk(int(chunk))
            local = indices[where] - chunk * size
            recon[where] = r[local]
            if embed is None:
                embed = np.empty((len(indices), e.shape[1]), dtype=e.dtype)
            embed[where] = e[local]
        return recon, embed if embed is not None else np.empty((0, 0), np.float16)

    def stream(
        self, *, embedding: bool = True
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(grid indices, recon, embedding)`` chunk after chunk (``embedding=False``: an
        empty embedding, nothing of it read)."""
        meta = self.meta
        for chunk in range(meta["chunks"]):
            r, e = self._chunk(chunk)
            start = chunk * meta["chunk_patches"]
            yield (
                np.arange(start, start + len(r), dtype=np.int64),
                np.asarray(r),
                np.asarray(e) if embedding else np.empty((len(r), 0), np.float16),
            )


def write_scores(path: Path, **arrays: np.ndarray) -> None:
    """One chunk of a classifier's scores, atomically (a rerun overwrites it)."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def read_scores(folder: Path) -> dict[str, np.ndarray]:
    """Every chunk of a classifier's scores, merged (a bounded candidate set)."""
    data: dict[str, list[np.ndarray]] = {}
    for f in sorted(folder.glob("chunk-*.npz")):
        with np.load(f) as z:
            for key in z.files:
                data.setdefault(key, []).append(z[key])
    return {k: np.concatenate(v) for k, v in data.items()}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
