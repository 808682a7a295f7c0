"""Label files through the REST API: upload (nml), export (csv/json), refusals."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tests.api.conftest import Api

V1 = "/api/v1"


def _nml(tmp_path: Path, *, voxel_size: tuple[float, float, float] = (32, 32, 35)) -> bytes:
    from server.wklib import wk

    annotation = wk.Annotation(name="labels", dataset_name="demo", voxel_size=voxel_size)
    group = annotation.skeleton.add_group("circular")
    for i, (x, y, z) in enumerate([(100, 100, 1), (300, 200, 2), (420, 300, 3)]):
        tree = group.add_tree(f"artifact {i}")
        tree.add_node(position=(x, y, z))
    path = tmp_path / "labels.nml"
    annotation.save(path)
    return path.read_bytes()


def test_upload_export_and_refusals(api: Api, dataset_id: int, tmp_path: Path) -> None:
    url = f"{V1}/datasets/{dataset_id}/labels/import"
    files = {"file": ("labels.nml", _nml(tmp_path), "application/xml")}
    first = api.client.post(url, files=files, headers=api.admin)
    assert first.status_code == 200, first.text
    report = first.json()
    assert report["added"] == 3 and report["added_by_type"] == {"circular": 3}
    again = api.client.post(url, files=files, headers=api.admin).json()
    assert again["added"] == 0 and again["skipped_existing"] == 3

    assert api.client.post(url, files=files, headers=api.annotator).status_code == 403
    bad = api.client.post(
        url, files={"file": ("x.nml", b"<not xml", "application/xml")}, headers=api.admin
    )
    assert bad.status_code == 422 and bad.json()["detail"]
    other_voxels = {"file": ("v.nml", _nml(tmp_path, voxel_size=(8, 8, 35)), "application/xml")}
    assert api.client.post(url, files=other_voxels, headers=api.admin).status_code == 422
    big = {"file": ("big.nml", b"x" * (api.settings.max_upload_bytes + 1), "application/xml")}
    assert api.client.post(url, files=big, headers=api.admin).status_code == 413

    exported = api.client.get(f"{V1}/datasets/{dataset_id}/labels/export", headers=api.annotator)
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == 3 and {r["type"] for r in rows} == {"circular"}
    assert {r["annotator"] for r in rows} == {"ada"} and {r["source"] for r in rows} == {"file"}
    as_json = api.client.get(
        f"{V1}/datasets/{dataset_id}/labels/export",
        params={"format": "json"},
        headers=api.annotator,
    )
    assert (
        as_json.status_code == 200
        and len(as_json.json()["labels"] if isinstance(as_json.json(), dict) else as_json.json())
        == 3
    )
