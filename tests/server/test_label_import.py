"""Importing label files (real genEM3 files and webKnossos annotations) and exporting labels."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from server.cli.main import app
from server.datasets.service import BBox, register_dataset
from server.db import migrate
from server.db.base import make_engine, make_sessionmaker, session_scope, write_transaction
from server.db.tables import Dataset, Label
from server.errors import InvalidInput
from server.labels.importer import (
    EXPORT_COLUMNS,
    ImportReport,
    export_labels_csv,
    export_labels_json,
    import_label_file,
)
from server.labels.service import disagreements
from server.settings import get_settings

if TYPE_CHECKING:
    from server.wklib import wk

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "genem3"
TRAINING_NML = FIXTURES / "artefact_trainingData.nml"
DISAGREEMENT_NML = FIXTURES / "test_dataset_annotation_disagreement_v01.nml"
DATASOURCE_JSON = FIXTURES / "datasources_classifier_v01.json"

DATASET_NAME = "scMS109"
# Covers every coordinate of the fixtures (x 19565-30379, y 15249-26485, z 15-7157) with
# room for whole patches around them; a multiple of the 140 px patch from its offset.
BBOX = BBox((19000, 14500, 0), (140 * 86, 140 * 90, 7200))
VOXEL_SIZE = (32, 32, 35)

runner = CliRunner()


@pytest.fixture(scope="module")
def sparse_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_genem3_dataset(tmp_path_factory.mktemp("sparse") / DATASET_NAME)


def write_genem3_dataset(path: Path) -> Path:
    """A Zarr3 dataset with the fixtures' bounding box; one chunk written, the rest empty."""
    from server.wklib import wk

    dataset = wk.Dataset(path, voxel_size=VOXEL_SIZE)
    layer = dataset.add_layer("color", wk.COLOR_CATEGORY, dtype="uint8", data_format="zarr3")
    mag = layer.add_mag(1, chunk_shape=(32, 32, 32), shard_shape=(1024, 1024, 32))
    rng = np.random.default_rng(0)
    mag.write(
        rng.integers(100, 200, size=(32, 32, 32), dtype=np.uint8),
        absolute_offset=BBOX.offset,
        allow_resize=True,
    )
    layer.bounding_box = wk.BoundingBox(BBOX.offset, BBOX.size)
    return path


@dataclass
class Db:
    sessions: sessionmaker[Session]
    dataset_id: int

    def dataset(self, session: Session) -> Dataset:
        found = session.get(Dataset, self.dataset_id)
        assert found is not None
        return found

    def import_file(
        self,
        filename: str,
        data: bytes,
        *,
        annotator: str = "ali",
        type_map: dict[str, str] | None = None,
    ) -> ImportReport:
        with write_transaction(self.sessions) as session:
            return import_label_file(
                session,
                dataset=self.dataset(session),
                filename=filename,
                data=data,
                annotator=annotator,
                type_map=type_map,
            )

    def import_path(self, path: Path, *, annotator: str = "ali") -> ImportReport:
        return self.import_file(path.name, path.read_bytes(), annotator=annotator)

    def labels(self) -> list[Label]:
        with session_scope(self.sessions) as session:
            return list(session.scalars(select(Label).order_by(Label.id)))

    def count(self) -> int:
        with session_scope(self.sessions) as session:
            return int(session.scalar(select(func.count(Label.id))) or 0)


@pytest.fixture
def db(db_url: str, sparse_dataset: Path) -> Iterator[Db]:
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as session:
        dataset = register_dataset(
            session, name=DATASET_NAME, path=str(sparse_dataset), stats_sample=4
        )
        dataset_id = dataset.id
    try:
        yield Db(sessions=sessions, dataset_id=dataset_id)
    finally:
        engine.dispose()


def _annotation(*, voxel_size: tuple[float, float, float] = VOXEL_SIZE) -> wk.Annotation:
    from server.wklib import wk

    return wk.Annotation(name="labels", dataset_name=DATASET_NAME, voxel_size=voxel_size)


def _nml_bytes(annotation: wk.Annotation, tmp_path: Path, suffix: str = ".nml") -> bytes:
    path = tmp_path / f"annotation{suffix}"
    annotation.save(path)
    return path.read_bytes()


def _outline(tree: wk.Tree, *, x: int, y: int, z: int, size: int = 140) -> None:
    """genEM3's patch outline: centre and corners of a patch in one z plane."""
    half = size // 2
    cx, cy = x + half, y + half
    for dx, dy in ((0, 0), (-half, -half), (-half, half), (half, -half), (half, half)):
        tree.add_node(position=(cx + dx, cy + dy, z))


# -- the real files ------------------------------------------------------------------------------
def test_training_nml_gives_600_typed_artifact_centres(db: Db) -> None:
    report = db.import_path(TRAINING_NML)
    assert report.format == "nml"
    assert report.added == report.found == 600
    assert report.added_by_class == {"artifact": 600, "clean": 0}
    assert report.added_by_type == {
        "circular": 64,
        "debris": 37,  # 34 from group solidShape + 3 trees named Debris
        "fold": 1,
        "missing": 2,
        "other": 1,  # the tree named Scratsch
        "scratch": 6,
        "untyped": 489,  # group Additional_Locations names no type
    }
    assert report.added_by_annotator == {"ali": 600}
    assert report.skipped_existing == report.conflicts == 0
    assert any("'Scratsch'" in w and "'other'" in w for w in report.warnings)
    assert any("2018-11-13_scMS109_1to7199_v01_l4_06_24_fixed_mag8" in w for w in report.warnings)

    labels = db.labels()
    assert len(labels) == 600
    debris_refs = Counter(
        "'Debris'" in (lab.source_ref or "") for lab in labels if lab.artifact_type == "debris"
    )
    assert debris_refs == {False: 34, True: 3}
    first = next(lab for lab in labels if (lab.source_ref or "").endswith("tree 1 '001'"))
    # node (25238, 20546, 3546): the 140 x 140 patch centred on it, as genEM3 cut it
    assert (first.x, first.y, first.z, first.w, first.h) == (25168, 20476, 3546, 140, 140)
    assert first.artifact_type == "circular" and first.source == "file"
    assert first.annotator == "ali"

    again = db.import_path(TRAINING_NML)
    assert again.added == 0 and again.skipped_existing == 600
    assert db.count() == 600


def test_disagreement_nml_gives_two_verdicts_per_patch(db: Db) -> None:
    report = db.import_path(DISAGREEMENT_NML, annotator="importer")
    assert report.added == 190
    assert report.added_by_annotator == {"AK": 95, "Flo": 95}
    assert report.added_by_class == {"artifact": 95, "clean": 95}
    assert report.added_by_type == {"debris": 95}
    # a derived dataset (..._artifact_pred) shares coordinates: a warning, not a refusal
    assert any("_artifact_pred" in w for w in report.warnings)

    verdicts: dict[tuple[int, ...], dict[str, str]] = defaultdict(dict)
    for lab in db.labels():
        assert (lab.w, lab.h) == (140, 140)
        verdicts[(lab.x, lab.y, lab.z)][lab.annotator] = lab.label
    assert len(verdicts) == 95
    pattern = Counter((v["AK"], v["Flo"]) for v in verdicts.values())
    assert pattern == {("artifact", "clean"): 58, ("clean", "artifact"): 37}
    # tree 'sample index: 299, AK: debris, Flo: clean': outline 25066..25206 x 20970..21110
    assert verdicts[(25066, 20970, 3566)] == {"AK": "artifact", "Flo": "clean"}
    with session_scope(db.sessions) as session:
        _, total = disagreements(session, dataset_id=db.dataset_id, limit=1, offset=0)
    assert total == 95

    again = db.import_path(DISAGREEMENT_NML, annotator="someone else")
    assert again.added == 0 and again.skipped_existing == 190


def test_datasource_json_gives_115_artifact_and_300_clean(db: Db) -> None:
    report = db.import_path(DATASOURCE_JSON)
    assert report.format == "datasource-json"
    assert report.added_by_class == {"artifact": 115, "clean": 300}
    assert report.added_by_type == {"untyped": 115}
    sources = json.loads(DATASOURCE_JSON.read_bytes())
    expected = {
        (*s["input_bbox"][:3], s["input_bbox"][3], s["input_bbox"][4]): (
            "artifact" if s["target_class"] == 1 else "clean"
        )
        for s in sources.values()
    }
    got = {(lab.x, lab.y, lab.z, lab.w, lab.h): lab.label for lab in db.labels()}
    assert got == expected  # exact positions, not snapped to the grid

    again = db.import_path(DATASOURCE_JSON)
    assert again.added == 0 and again.skipped_existing == 415
    assert db.count() == 415


def test_same_verdict_in_two_files_counts_once(db: Db) -> None:
    """genEM3 derived its data sources from the training NML: 114 patches are the same."""
    db.import_path(TRAINING_NML)
    report = db.import_path(DATASOURCE_JSON)
    assert report.skipped_existing == 114
    assert report.added_by_class == {"artifact": 1, "clean": 300}
    assert db.count() == 600 + 301


def test_conflicts_with_earlier_labels_are_reported(db: Db, tmp_path: Path) -> None:
    db.import_path(DISAGREEMENT_NML)
    annotation = _annotation()
    _outline(annotation.skeleton.add_tree("Bea: clean"), x=25066, y=20970, z=3566)
    _outline(annotation.skeleton.add_tree("Bea: clean"), x=21000, y=16000, z=100)
    report = db.import_file("bea.nml", _nml_bytes(annotation, tmp_path))
    assert report.added == 2
    assert report.conflicts == 1  # AK called the first patch debris
    assert report.added_by_annotator == {"Bea": 2}


# -- conventions on annotations written with the webknossos library ------------------------------
def test_bounding_boxes_named_by_class_become_grid_patches(db: Db, tmp_path: Path) -> None:
    from server.wklib import wk

    ox, oy, _ = BBOX.offset
    annotation = _annotation()
    annotation.user_bounding_boxes = [
        # off the grid: overlaps 2 x 2 patches in each of 2 slices
        wk.BoundingBox((ox + 140 * 10 + 70, oy + 140 * 5 + 70, 100), (140, 140, 2)).with_name(
            "artifact:Scratch"
        ),
        wk.BoundingBox((ox + 140 * 30, oy + 140 * 30, 7), (10, 10, 1)).with_name("ARTIFACT"),
        # holds 3 x 2 whole patches (and parts of others)
        wk.BoundingBox((ox + 140 * 20, oy + 140 * 20, 50), (140 * 3 + 10, 140 * 2, 1)).with_name(
            "clean"
        ),
        wk.BoundingBox((ox + 140 * 40, oy + 140 * 40, 50), (100, 100, 1)).with_name("clean"),
        wk.BoundingBox((ox, oy, 0), (500, 500, 1)).with_name("Bounding box 5"),
    ]
    data = _nml_bytes(annotation, tmp_path)
    report = db.import_file("boxes.nml", data)
    assert report.added_by_class == {"artifact": 9, "clean": 6}
    assert report.added_by_type == {"scratch": 8, "untyped": 1}
    assert any("Bounding box 5" in w for w in report.warnings)
    assert any("hold no whole grid patch" in w for w in report.warnings)

    labels = db.labels()
    scratch = {(lab.x, lab.y, lab.z) for lab in labels if lab.artifact_type == "scratch"}
    xs, ys = (ox + 140 * 10, ox + 140 * 11), (oy + 140 * 5, oy + 140 * 6)
    assert scratch == {(x, y, z) for x in xs for y in ys for z in (100, 101)}
    clean = {(lab.x, lab.y) for lab in labels if lab.label == "clean"}
    assert clean == {(ox + 140 * (20 + i), oy + 140 * (20 + j)) for i in range(3) for j in range(2)}
    assert all((lab.w, lab.h) == (140, 140) for lab in labels)

    # the same boxes in a zip add nothing new
    zipped = db.import_file("boxes.zip", _nml_bytes(annotation, tmp_path, ".zip"))
    assert zipped.format == "zip" and zipped.added == 0 and zipped.skipped_existing == 15


def test_tree_conventions_and_type_mapping(db: Db, tmp_path: Path) -> None:
    annotation = _annotation()
    skeleton = annotation.skeleton
    circular = skeleton.add_group("Circular")
    circular.add_tree("001").add_node(position=(21000, 16000, 10))
    circular.add_tree("002").add_node(position=(21300, 16000, 10), comment="fold")
    skeleton.add_tree("Scratsch").add_node(position=(21600, 16000, 10))
    skeleton.add_tree("clean").add_node(position=(21900, 16000, 10))
    skeleton.add_tree("Tree012").add_node(position=(22200, 16000, 10))
    plane = skeleton.add_group("plane:1")  # genEM3 test box: the plane's default verdict
    _outline(plane.add_tree("patch00.00:X"), x=22000, y=17000, z=20)
    _outline(plane.add_tree("patch00.01:0"), x=22140, y=17000, z=20)
    _outline(skeleton.add_tree("patch:X"), x=22280, y=17000, z=20)  # no verdict: skipped
    data = _nml_bytes(annotation, tmp_path)

    report = db.import_file("trees.nml", data, type_map={"scratsch": "scratch"})
    assert not any("Scratsch" in w for w in report.warnings)
    assert any("'patch:X'" in w and "without a verdict" in w for w in report.warnings)
    got = {
        (lab.x + lab.w // 2, lab.y + lab.h // 2): (lab.label, lab.artifact_type)
        for lab in db.labels()
    }
    assert got == {
        (21000, 16000): ("artifact", "circular"),
        (21300, 16000): ("artifact", "fold"),  # the node's comment is the most specific
        (21600, 16000): ("artifact", "scratch"),
        (21900, 16000): ("clean", None),
        (22200, 16000): ("artifact", None),
        (22070, 17070): ("artifact", None),
        (22210, 17070): ("clean", None),
    }
    # without the mapping the misspelt name is 'other', with a warning
    report = db.import_file("trees.nml", data, annotator="bob")
    assert any("'Scratsch'" in w for w in report.warnings)
    types = Counter(lab.artifact_type for lab in db.labels() if lab.annotator == "bob")
    assert types["other"] == 1 and types["scratch"] == 0


# -- bad files: refused as a whole ---------------------------------------------------------------
def _zip_without_nml() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("volume/data.txt", "not an annotation")
    return buffer.getvalue()


def _outside_nml(tmp_path: Path) -> bytes:
    annotation = _annotation()
    annotation.skeleton.add_tree("001").add_node(position=(25000, 20000, 100))  # fine
    annotation.skeleton.add_tree("002").add_node(position=(19010, 20000, 100))  # patch sticks out
    annotation.skeleton.add_tree("003").add_node(position=(25000, 20000, 9000))
    return _nml_bytes(annotation, tmp_path)


def _whole_dataset_box(tmp_path: Path) -> bytes:
    from server.wklib import wk

    annotation = _annotation()
    annotation.user_bounding_boxes = [wk.BoundingBox(BBOX.offset, BBOX.size).with_name("clean")]
    return _nml_bytes(annotation, tmp_path)


BAD_FILES = [
    ("broken.nml", lambda _: TRAINING_NML.read_bytes()[:5000], "not valid XML"),
    ("html.nml", lambda _: b"<html><body>hello</body></html>", "not a readable webKnossos NML"),
    ("annotation.zip", lambda _: _zip_without_nml(), "holds no NML file"),
    ("annotation.zip", lambda _: b"PK\x03\x04 truncated", "not a valid zip file"),
    (
        "other_voxel.nml",
        lambda _: TRAINING_NML.read_bytes().replace(b'<scale x="32"', b'<scale x="16"'),
        "voxel size 16 x 32 x 35 nm",
    ),
    ("outside.nml", _outside_nml, "2 of 3 labels lie (partly) outside"),
    ("everything_clean.nml", _whole_dataset_box, "one import may add at most"),
    ("broken.json", lambda _: b'{"datasource_0": {', "not valid JSON"),
    (
        "classes.json",
        lambda _: json.dumps(
            {
                "a": {"input_bbox": [25000, 20000, 10, 140, 140, 1], "target_class": 1},
                "b": {"input_bbox": [25000, 20000, 11, 140, 140, 1], "target_class": 2},
            }
        ).encode(),
        "target_class 2",
    ),
    ("labels.txt", lambda _: b"x,y,z\n1,2,3\n", "unsupported label file"),
]


@pytest.mark.parametrize(("filename", "make", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_are_refused_whole(
    db: Db, tmp_path: Path, filename: str, make: Callable[[Path], bytes], message: str
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        db.import_file(filename, make(tmp_path))
    assert db.count() == 0


# -- export ----------------------------------------------------------------------------------------
def test_export_csv_and_json_round_trip(db: Db) -> None:
    db.import_path(TRAINING_NML)
    db.import_path(DISAGREEMENT_NML)
    with session_scope(db.sessions) as session:
        dataset = db.dataset(session)
        text = io.StringIO()
        written = export_labels_csv(session, dataset=dataset, out=text)
        document = io.StringIO()
        written_json = export_labels_json(session, dataset=dataset, out=document)
    assert written == written_json == 790

    rows = list(csv.DictReader(io.StringIO(text.getvalue())))
    header = text.getvalue().splitlines()[0].split(",")
    assert header[:8] == ["x", "y", "z", "label", "type", "annotator", "source", "created_at"]
    assert header == list(EXPORT_COLUMNS)
    exported = Counter(
        (
            int(r["x"]),
            int(r["y"]),
            int(r["z"]),
            int(r["w"]),
            int(r["h"]),
            r["label"],
            r["type"] or None,
            r["annotator"],
            r["source"],
        )
        for r in rows
    )
    stored = Counter(
        (lab.x, lab.y, lab.z, lab.w, lab.h, lab.label, lab.artifact_type, lab.annotator, lab.source)
        for lab in db.labels()
    )
    assert exported == stored
    assert all(datetime.fromisoformat(r["created_at"]).tzinfo is not None for r in rows)

    parsed = json.loads(document.getvalue())
    assert parsed["dataset"] == DATASET_NAME and parsed["voxel_size"] == [32.0, 32.0, 35.0]
    assert len(parsed["labels"]) == 790
    assert Counter(lab["type"] for lab in parsed["labels"])["circular"] == 64


# -- command line ----------------------------------------------------------------------------------
@pytest.fixture
def cli_env(
    tmp_path: Path, db_url: str, sparse_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    monkeypatch.setenv("ARTIFACT_LOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ARTIFACT_LOOP_DATABASE_URL", db_url)
    monkeypatch.setenv("ARTIFACT_LOOP_STATS_SAMPLE_PATCHES", "4")
    get_settings.cache_clear()
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["dataset", "add", DATASET_NAME, str(sparse_dataset)])
    assert result.exit_code == 0, result.output
    yield tmp_path
    get_settings.cache_clear()


def test_cli_import_and_export(cli_env: Path) -> None:
    result = runner.invoke(
        app,
        [
            "labels",
            "import",
            str(TRAINING_NML),
            "--dataset",
            DATASET_NAME,
            "--map",
            "Scratsch=scratch",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "added 600 of 600 labels" in result.output
    assert "by Ali Karimi" in result.output  # the annotation's owner by default
    assert "artifact: circular" in result.output and "Scratsch" not in result.output

    result = runner.invoke(
        app,
        ["labels", "import", str(DATASOURCE_JSON), "--dataset", DATASET_NAME, "--annotator", "ak"],
    )
    assert result.exit_code == 0, result.output
    assert "added 415 of 415 labels" in result.output
    result = runner.invoke(
        app,
        ["labels", "import", str(DATASOURCE_JSON), "--dataset", DATASET_NAME, "--annotator", "ak"],
    )
    assert result.exit_code == 0, result.output
    assert "added 0 of 415 labels" in result.output
    assert "already imported (skipped)" in result.output and "415" in result.output

    out = cli_env / "labels.csv"
    result = runner.invoke(app, ["labels", "export", "--dataset", DATASET_NAME, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 1,015 labels" in result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1015
    assert Counter(r["type"] for r in rows)["scratch"] == 7
    assert not (cli_env / "labels.csv.partial").exists()


def test_cli_bad_file_is_one_line_error(cli_env: Path) -> None:
    bad = cli_env / "bad.nml"
    bad.write_bytes(b"<things><parameters>")
    result = runner.invoke(
        app, ["labels", "import", str(bad), "--dataset", DATASET_NAME, "--annotator", "x"]
    )
    assert result.exit_code == 1
    assert "error:" in result.output and "not valid XML" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(
        app, ["labels", "import", str(bad), "--dataset", "nope", "--annotator", "x"]
    )
    assert result.exit_code == 1 and "no dataset 'nope'" in result.output
    result = runner.invoke(
        app, ["labels", "export", "--dataset", DATASET_NAME, "--out", str(cli_env / "x.txt")]
    )
    assert result.exit_code == 1 and ".csv or .json" in result.output
