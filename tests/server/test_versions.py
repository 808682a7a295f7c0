"""Which version is active: a worse new classifier is kept but not activated by itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from models.metrics import bootstrap_intervals, classification_report
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope
from server.db.tables import Dataset, ModelVersion
from server.versions.service import (
    activate_version,
    active_model,
    held_back_versions,
    refresh_active_flags,
    unpin,
)


def _audit(f1: float, pr_auc: float, spread: float = 0.05) -> dict[str, object]:
    return {
        "audit": {
            "n": 400,
            "positives": 40,
            "f1": f1,
            "pr_auc": pr_auc,
            "intervals": {
                "f1": [f1 - spread, f1 + spread],
                "pr_auc": [pr_auc - spread, pr_auc + spread],
            },
        }
    }


def _dataset(session: Session) -> Dataset:
    dataset = Dataset(
        name="d", path="/nowhere", data_format="zarr3", voxel_size=[32, 32, 35],
        bbox_x=0, bbox_y=0, bbox_z=0, bbox_w=1400, bbox_h=1400, bbox_d=4,
        norm_mean=148.0, norm_std=36.0,
    )  # fmt: skip
    session.add(dataset)
    session.flush()
    return dataset


def _record(session: Session, dataset: Dataset, metrics: dict[str, object]) -> ModelVersion:
    """What the training step does: record a ready version, then refresh the active flags."""
    version = ModelVersion(
        dataset_id=dataset.id, kind="classifier", status="ready", metrics=metrics
    )
    session.add(version)
    session.flush()
    refresh_active_flags(session, dataset_id=dataset.id)
    return version


def test_a_worse_new_version_is_kept_flagged_and_not_activated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    with session_scope(make_sessionmaker(engine)) as session:
        dataset = _dataset(session)
        good = _record(session, dataset, _audit(f1=0.91, pr_auc=0.93))
        assert good.active
        worse = _record(session, dataset, _audit(f1=0.69, pr_auc=0.75))
        assert good.active and not worse.active, "F1 0.69 (up to 0.74) must not replace 0.91"
        assert active_model(session, dataset_id=dataset.id, kind="classifier") is good
        held = held_back_versions(session, dataset_id=dataset.id, kind="classifier")
        assert set(held) == {worse.id} and "below 0.930" in held[worse.id]

        # within its interval (0.88 up to 0.93 >= 0.91): noise, the newer one takes over
        close = _record(session, dataset, _audit(f1=0.88, pr_auc=0.92))
        assert close.active and not good.active
        # an audit set without artifacts measures nothing (F1 0.0 is no value): the newest wins
        no_artifacts = {"n": 30, "positives": 0, "negatives": 30, "f1": 0.0, "pr_auc": None}
        unmeasured = _record(session, dataset, {"audit": no_artifacts})
        assert unmeasured.active

        # an admin may still activate the held-back one; unpinning returns to the rule
        activate_version(session, version_id=worse.id)
        assert worse.active and worse.pinned and not unmeasured.active
        assert unpin(session, dataset_id=dataset.id, kind="classifier") is unmeasured
        assert unmeasured.active and not worse.active and not worse.pinned
    engine.dispose()


def test_without_hold_back_the_newest_version_is_active(tmp_path: Path) -> None:
    """``simulate`` turns the rule off: its audit set is the test set, which must not decide
    which version picks the next labels."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    with session_scope(make_sessionmaker(engine)) as session:
        dataset = _dataset(session)
        good = _record(session, dataset, _audit(f1=0.91, pr_auc=0.93))
        worse = ModelVersion(
            dataset_id=dataset.id, kind="classifier", status="ready",
            metrics=_audit(f1=0.69, pr_auc=0.75),
        )  # fmt: skip
        session.add(worse)
        session.flush()
        refresh_active_flags(session, dataset_id=dataset.id, hold_back=False)
        assert worse.active and not good.active
        assert (
            active_model(session, dataset_id=dataset.id, kind="classifier", hold_back=False)
            is worse
        )
        assert (
            held_back_versions(session, dataset_id=dataset.id, kind="classifier", hold_back=False)
            == {}
        )
        assert active_model(session, dataset_id=dataset.id, kind="classifier") is good, (
            "the service's default keeps the rule"
        )
    engine.dispose()


def test_classification_report_carries_bootstrap_intervals() -> None:
    rng = np.random.default_rng(3)
    truth = rng.random(1000) < 0.05
    scores = np.clip(truth * 0.25 + rng.random(1000) * 0.6, 0, 1)
    report = classification_report(truth, scores)
    assert report["positives"] == int(truth.sum()) and report["negatives"] == 1000 - truth.sum()
    for name in ("f1", "pr_auc", "precision_at_recall_0.9"):
        lo, hi = report["intervals"][name]
        assert 0 <= lo <= report[name] <= hi <= 1, name
    # fewer artifacts, wider interval
    few = classification_report(truth[:300], scores[:300])["intervals"]["pr_auc"]
    assert few[1] - few[0] > report["intervals"]["pr_auc"][1] - report["intervals"]["pr_auc"][0]
    # nothing to resample without both classes: no interval, and no invented metric
    empty = classification_report(np.zeros(50, bool), scores[:50])
    assert empty["pr_auc"] is None and empty["intervals"]["pr_auc"] is None
    assert bootstrap_intervals(truth, scores, seed=1) == bootstrap_intervals(truth, scores, seed=1)
