"""Step ``audit``: every classifier version in play is measured again on the current audit
set, and every two of them are compared on the very same patches.

load (the audit set's latest labels, the versions in play) -> compute (each version's
probabilities on the audit patches, cached per version by position; a report per version;
a paired bootstrap of each pair's difference) -> record (each version's ``metrics.audit``,
then the active flags, so the hold-back rule compares like with like)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from sqlalchemy import select

from server.datasets.service import open_source
from server.db.base import write_transaction
from server.db.tables import Dataset, Job, Label, ModelVersion
from server.jobs.context import Report, StepContext
from server.jobs.kinds import JobKind
from server.labels.training_set import audit_labels
from server.pixels.reading import label_origins, read_at, use_all_cores
from server.pixels.source import PatchSource
from server.versions.service import (
    active_model,
    held_back_reason,
    model_dir,
    refresh_active_flags,
)

if TYPE_CHECKING:
    from models.networks import Classifier

# The newest ready classifiers re-measured each time (the active and pinned ones always are):
# older ones keep the measurement they last had, marked with the audit set it was made on.
VERSIONS_IN_PLAY = 12
EXAMPLES_PER_GALLERY = 8
PAIRED_RESAMPLES = 500
CACHE_FILE = "audit-scores.npz"


def run(ctx: StepContext, job: Job) -> dict[str, Any]:
    return remeasure(ctx, ctx.dataset_of(job), progress=ctx.progress(job.id))


def after(ctx: StepContext, job: Job) -> None:
    """Proposals follow the active classifier: when measuring on more audit labels changed
    which one it is, the pool is scored again with the new one."""
    before, now = job.result.get("active_before"), job.result.get("active_after")
    if now is not None and now != before:
        with write_transaction(ctx.sessions) as session:
            ctx.start(
                session,
                kind=JobKind.SCORE,
                dataset_id=job.dataset_id,
                params={"model_version_id": now},
            )


def versions_in_play(session: Any, *, dataset_id: int) -> list[ModelVersion]:
    """Ready classifiers with weights: the newest :data:`VERSIONS_IN_PLAY`, plus the active
    and the pinned ones, oldest first."""
    ready = list(
        session.scalars(
            select(ModelVersion)
            .where(
                ModelVersion.dataset_id == dataset_id,
                ModelVersion.kind == "classifier",
                ModelVersion.status == "ready",
                ModelVersion.weights_path.is_not(None),
            )
            .order_by(ModelVersion.id)
        )
    )
    newest = {v.id for v in ready[-VERSIONS_IN_PLAY:]}
    return [v for v in ready if v.id in newest or v.active or v.pinned]


def remeasure(
    ctx: StepContext, dataset: Dataset, *, progress: Report | None = None
) -> dict[str, Any]:
    """Measure every version in play on the current audit set; see the module docstring."""
    report = progress or (lambda _f, _m: None)
    with write_transaction(ctx.sessions) as session:
        labels = audit_labels(session, dataset=dataset)
        for label in labels:
            session.expunge(label)
        in_play = versions_in_play(session, dataset_id=dataset.id)
        # a version whose weights file is gone cannot be measured: it keeps what it had
        versions = [
            (v.id, Path(v.weights_path or ""))
            for v in in_play
            if Path(v.weights_path or "").is_file()
        ]
        pinned = {v.id for v in in_play if v.pinned}
        before = active_model(
            session, dataset_id=dataset.id, kind="classifier",
            hold_back=ctx.settings.hold_back_worse,
        )  # fmt: skip
        active_before = before.id if before is not None else None
    truth = np.asarray([lab.label == "artifact" for lab in labels], dtype=bool)
    through = max((lab.id for lab in labels), default=0)
    if not versions or not labels:
        return {"versions": [], "patches": len(labels), "active_before": active_before,
                "active_after": active_before}  # fmt: skip
    use_all_cores(ctx.settings)
    origins = label_origins(dataset, labels)
    with open_source(dataset) as source:
        scored = _probabilities(ctx, dataset, source, versions, origins, report)
    report(0.8, "comparing versions on the same audit patches")
    reports = _reports(labels, truth, scored, through=through, pinned=pinned)
    with write_transaction(ctx.sessions) as session:
        for version_id, audit in reports.items():
            version = session.get(ModelVersion, version_id)
            if version is not None:
                version.metrics = {**(version.metrics or {}), "audit": audit}
        session.flush()
        refresh_active_flags(session, dataset_id=dataset.id, hold_back=ctx.settings.hold_back_worse)
        after_ = active_model(
            session, dataset_id=dataset.id, kind="classifier",
            hold_back=ctx.settings.hold_back_worse,
        )  # fmt: skip
    return {
        "versions": sorted(reports),
        "patches": int(truth.size),
        "artifacts": int(truth.sum()),
        "active_before": active_before,
        "active_after": after_.id if after_ is not None else None,
    }


def _probabilities(
    ctx: StepContext,
    dataset: Dataset,
    source: PatchSource,
    versions: list[tuple[int, Path]],
    origins: np.ndarray,
    report: Report,
) -> dict[int, tuple[np.ndarray, float]]:
    """Each version's calibrated p(artifact) at ``origins`` and its threshold. A version's
    probabilities of a position never change: they are kept beside its weights, and only
    new audit patches are read and scored."""
    from models.calibration import calibrated, predict_logits
    from models.checkpoint import load_checkpoint
    from models.networks import for_inference

    keys = [tuple(int(v) for v in o) for o in origins]
    caches = {vid: _load_cache(ctx, dataset, vid) for vid, _ in versions}
    missing = sorted({k for c in caches.values() for k in keys if k not in c})
    patches: dict[tuple[int, ...], np.ndarray] = {}
    if missing:
        want = np.asarray(missing, dtype=np.int64)
        order = np.lexsort((want[:, 1], want[:, 0], want[:, 2]))  # storage order
        pixels = read_at(source, dataset, want[order])
        patches = {missing[i]: pixels[j] for j, i in enumerate(order)}
    out: dict[int, tuple[np.ndarray, float]] = {}
    for n, (vid, weights) in enumerate(versions):
        cache = caches[vid]
        model, meta = load_checkpoint(weights)
        extra = meta.get("extra") or {}
        todo = [k for k in keys if k not in cache]
        if todo:
            report(0.8 * n / len(versions), f"version {vid}: scoring {len(todo)} audit patches")
            logits = predict_logits(
                cast("Classifier", for_inference(model)),
                np.stack([patches[k] for k in todo]),
                tta=int(extra.get("tta", 1)),
            )
            p = calibrated(logits, float(extra.get("temperature", 1.0)))
            cache.update(zip(todo, (float(v) for v in p), strict=True))
            _save_cache(ctx, dataset, vid, cache)
        out[vid] = (np.asarray([cache[k] for k in keys]), float(extra.get("threshold", 0.5)))
    return out


def _load_cache(
    ctx: StepContext, dataset: Dataset, version_id: int
) -> dict[tuple[int, ...], float]:
    path = model_dir(ctx.settings, dataset_id=dataset.id, version_id=version_id) / CACHE_FILE
    if not path.is_file():
        return {}
    with np.load(path) as data:
        return {
            tuple(int(v) for v in o): float(p)
            for o, p in zip(data["origin"], data["p"], strict=True)
        }


def _save_cache(
    ctx: StepContext, dataset: Dataset, version_id: int, cache: dict[tuple[int, ...], float]
) -> None:
    folder = model_dir(ctx.settings, dataset_id=dataset.id, version_id=version_id)
    tmp = folder / f".{CACHE_FILE}.tmp.npz"
    np.savez(
        tmp,
        origin=np.asarray(list(cache), np.int64).reshape(-1, 3),
        p=np.asarray(list(cache.values())),
    )
    tmp.replace(folder / CACHE_FILE)


def _reports(
    labels: list[Label],
    truth: np.ndarray,
    scored: dict[int, tuple[np.ndarray, float]],
    *,
    through: int,
    pinned: set[int] | frozenset[int] = frozenset(),
) -> dict[int, dict[str, Any]]:
    from models.metrics import MIN_AUDIT_ARTIFACTS, classification_report, paired_difference

    measured_at = datetime.now(UTC).isoformat(timespec="seconds")
    out: dict[int, dict[str, Any]] = {}
    for vid, (p, threshold) in scored.items():
        audit = classification_report(
            truth, p, threshold=threshold, min_artifacts=MIN_AUDIT_ARTIFACTS
        )
        audit["examples"] = audit_examples(labels, truth, p, threshold)
        audit["audit_set"] = {
            "patches": int(truth.size),
            "artifacts": int(truth.sum()),
            "through_label": through,
            "measured_at": measured_at,
            "minimum_artifacts": MIN_AUDIT_ARTIFACTS,
        }
        audit["paired"] = {}
        out[vid] = audit
    # the pairs anyone asks for, not all of them (the audit set may be thousands of patches):
    # each version against the one chosen before it (the hold-back rule's walk), and every
    # version against each that may be active (the walk's choice, a pinned one, the newest)
    ids = sorted(scored)

    def pair(a: int, b: int) -> None:
        if a == b or str(b) in out[a]["paired"]:
            return
        (pa, ta), (pb, tb) = scored[a], scored[b]
        diff = paired_difference(
            truth, pa, pb, threshold=ta, baseline_threshold=tb,
            resamples=PAIRED_RESAMPLES, seed=min(a, b) * 7919 + max(a, b),
        )  # fmt: skip
        out[a]["paired"][str(b)] = diff
        out[b]["paired"][str(a)] = _reversed(diff)

    chosen = ids[0]
    for vid in ids[1:]:
        pair(vid, chosen)
        if held_back_reason(_as_version(vid, out[vid]), _as_version(chosen, out[chosen])) is None:
            chosen = vid
    for active in {chosen, ids[-1], *(pinned & set(ids))}:
        for vid in ids:
            pair(vid, active)
    return out


def _as_version(version_id: int, audit: dict[str, Any]) -> ModelVersion:
    """What the hold-back rule reads of a version: its id and audit metrics."""
    return ModelVersion(id=version_id, metrics={"audit": audit})


def _reversed(diff: dict[str, Any]) -> dict[str, Any]:
    """The same comparison seen from the other version: b - a = -(a - b)."""
    out = dict(diff)
    for name, value in diff.items():
        if isinstance(value, dict) and "difference" in value:
            lo, hi = value["interval"]
            out[name] = {
                "difference": -value["difference"] + 0.0,
                "interval": [-hi + 0.0, -lo + 0.0],
            }
    return out


def audit_examples(
    labels: list[Label], truth: np.ndarray, p: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Audit patches for the galleries: hits, misses and the most uncertain."""
    pred = p >= threshold

    def items(mask: np.ndarray, order: np.ndarray) -> list[dict[str, Any]]:
        chosen = [i for i in order if mask[i]][:EXAMPLES_PER_GALLERY]
        return [
            {
                "x": labels[i].x,
                "y": labels[i].y,
                "z": labels[i].z,
                "p_artifact": float(p[i]),
                "label": "artifact" if truth[i] else "clean",
            }
            for i in chosen
        ]

    by_p = np.argsort(-p)
    return {
        "true_positive": items(truth & pred, by_p),
        "false_positive": items(~truth & pred, by_p),
        "false_negative": items(truth & ~pred, np.argsort(p)),
        "most_uncertain": items(np.ones_like(truth), np.argsort(np.abs(p - threshold))),
    }
