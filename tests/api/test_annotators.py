"""GET /datasets/{id}/annotators: the genEM3 disagreement file, labels given one by one, and
datasets where nothing can be estimated yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Api
from tests.server.test_label_import import DATASET_NAME, DISAGREEMENT_NML, write_genem3_dataset


def _annotators(api: Api, dataset_id: int, headers: dict[str, str]) -> dict[str, Any]:
    r = api.client.get(f"/api/v1/datasets/{dataset_id}/annotators", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_genem3_disagreement_file_gives_ak_and_flo_their_kappa(
    api: Api, tmp_path: Path
) -> None:
    path = write_genem3_dataset(tmp_path / DATASET_NAME)
    r = api.client.post(
        "/api/v1/datasets",
        json={"name": DATASET_NAME, "path": str(path), "pretrain": False},
        headers=api.admin,
    )
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    r = api.client.post(
        f"/api/v1/datasets/{dataset_id}/labels/import",
        files={"file": (DISAGREEMENT_NML.name, DISAGREEMENT_NML.read_bytes())},
        headers=api.admin,
    )
    assert r.status_code == 200, r.text
    assert r.json()["added_by_annotator"] == {"AK": 95, "Flo": 95}

    report = _annotators(api, dataset_id, api.annotator)
    assert (report["labels"], report["patches"], report["patches_with_several"]) == (190, 95, 95)
    rows = {a["annotator"]: a for a in report["annotators"]}
    assert set(rows) == {"AK", "Flo"}
    assert (rows["AK"]["artifact"], rows["AK"]["clean"]) == (58, 37)
    assert (rows["Flo"]["artifact"], rows["Flo"]["clean"]) == (37, 58)
    for row in rows.values():
        assert row["labels"] == 95
        # an import carries no labelling time
        assert row["labels_per_hour"]["value"] is None and row["labels_per_hour"]["reason"]
        # two annotators who never agree: the consensus cannot side with either
        assert row["agreement_with_consensus"] == {"value": 0.5, "n": 95, "reason": None}
        assert row["reliability"]["value"] is None and row["reliability"]["n"] == 95
        assert "only two annotators" in row["reliability"]["reason"]

    (pair,) = report["pairs"]
    assert (pair["first"], pair["second"]) == ("AK", "Flo")
    kappa = pair["kappa"]
    chance = 2 * (58 * 37) / 95**2  # p_o = 0: they never agree
    assert kappa["value"] == pytest.approx(-chance / (1 - chance))
    assert kappa["value"] == pytest.approx(-0.907, abs=5e-4)
    assert kappa["n"] == 95 and kappa["reason"] is None
    lo, hi = kappa["interval"]
    assert -1.0 <= lo < kappa["value"] < hi < -0.5
    # alpha over 95 pairable patches with 95 verdicts of each class, none agreeing:
    # 1 - (n - 1) o_01 / (n_0 n_1) = 1 - 189 * 95 / 95^2
    alpha = report["alpha"]
    assert alpha["value"] == pytest.approx(1 - 189 / 95) and alpha["n"] == 95
    assert alpha["interval"] is not None
    # the same answer again: the bootstrap is seeded
    assert _annotators(api, dataset_id, api.admin) == report


def test_labels_given_one_by_one_have_a_pace_and_three_annotators_a_reliability(
    api: Api, dataset_id: int
) -> None:
    people = {name: api.token(name) for name in ("cat", "dan")}
    people["bob"] = api.annotator
    verdicts = {  # patch -> verdict of bob, cat, dan: dan disagrees on the last two
        (0, 0): ("artifact",) * 3,
        (140, 0): ("clean",) * 3,
        (280, 0): ("clean",) * 3,
        (0, 140): ("artifact", "artifact", "clean"),
        (140, 140): ("clean", "clean", "artifact"),
    }
    for (x, y), said in verdicts.items():
        for name, label in zip(("bob", "cat", "dan"), said, strict=True):
            r = api.client.post(
                f"/api/v1/datasets/{dataset_id}/labels",
                json={"x": x, "y": y, "z": 0, "label": label},
                headers=people[name],
            )
            assert r.status_code == 201, r.text

    report = _annotators(api, dataset_id, api.annotator)
    rows = {a["annotator"]: a for a in report["annotators"]}
    assert set(rows) == {"bob", "cat", "dan"}
    for row in rows.values():
        assert row["labels"] == 5
        pace = row["labels_per_hour"]
        assert pace["value"] > 0 and pace["n"] == 4 and pace["reason"] is None
        assert row["reliability"]["reason"] is None and row["reliability"]["n"] == 5
    reliability = {name: row["reliability"]["value"] for name, row in rows.items()}
    assert min(reliability, key=lambda name: reliability[name]) == "dan"
    assert rows["dan"]["agreement_with_consensus"]["value"] < 0.7
    kappas = {(p["first"], p["second"]): p["kappa"] for p in report["pairs"]}
    assert kappas[("bob", "cat")]["value"] == pytest.approx(1.0)
    assert kappas[("bob", "dan")]["n"] == 5
    assert report["alpha"]["n"] == 5


def test_nothing_to_compare_says_why_and_unknown_datasets_are_404(
    api: Api, dataset_id: int
) -> None:
    empty = _annotators(api, dataset_id, api.annotator)
    assert empty["annotators"] == [] and empty["pairs"] == []
    assert empty["alpha"] == {
        "value": None,
        "n": 0,
        "reason": "no patch has two or more labels",
        "interval": None,
    }
    r = api.client.get("/api/v1/datasets/999/annotators", headers=api.annotator)
    assert r.status_code == 404 and "999" in r.json()["detail"]
    assert api.client.get(f"/api/v1/datasets/{dataset_id}/annotators").status_code == 401
