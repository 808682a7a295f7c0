"""How well the prediction's re-image list finds the sections and fields a lab must image again.

For each volume (the synthetic generator's clean tissue, and the real EM tissue of the
real-tissue benchmark when its archive can be had: cremi-c, ssTEM sections of a 3-D stack, and
tau-tem, 560 x 560 px tiles of one TEM image stacked as sections), sections are painted at random with one
of: nothing (clean), one missing field of the 4 x 4 montage (blank), or a charging region
(a bright soft-edged disc over 25-45% of the section). A classifier is trained as the QC
test trains it (clean patches of other sections against the same patches with a blank or a
bright part), the dense prediction runs over the painted sections with the shipped QC
defaults, and its re-image list is scored:

* sections: a painted section is a positive; recall and precision of ``reimage_sections``,
  and recall of the old rule (whole-section fraction >= 0.5) for comparison;
* fields: a field at least half covered by a defect is a positive (recall); a flagged field
  counts as correct when a defect covers at least a quarter of it (precision), since a
  field partly under a charging region is rightly re-imaged too.

    python bench/qc_reimage.py --out bench/results/qc_reimage.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.training import train_classifier
from server.pixels.source import PatchSource
from server.predictions import dense as predict
from server.predictions.finish import finish_prediction
from server.settings import Settings
from server.sim.montage import field_box, paint_charging, paint_missing_field
from server.wklib import wk

GRID = (4, 4)
PATCH = 140


def synthetic_sections(n: int, side: int, seed: int) -> np.ndarray:
    from server.sim.synth import make_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_dataset(Path(tmp) / "s", seed=seed, shape=(side, n), artifact_rate=0.0)
        color = wk.Dataset.open(Path(tmp) / "s").get_layer("color").get_mag(1)
        data = color.read(absolute_offset=(0, 0, 0), size=(side, side, n))[0]
    return np.ascontiguousarray(data.transpose(2, 1, 0))  # (z, y, x)


def real_sections(name: str, cache: Path, side: int) -> np.ndarray:
    from server.sim.real_tissue import VOLUMES, fetch_volume

    sections = fetch_volume(VOLUMES[name], cache, say=print)
    return np.ascontiguousarray(sections[:, :side, :side])


def paint(sections: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Each section clean, missing a field or charging (a third each); per section what was
    painted and the share of each field it covers."""
    out = sections.copy()
    truth = []
    for z, section in enumerate(out):
        kind = ("clean", "missing", "charging")[z % 3]
        if kind == "missing":
            field = (int(rng.integers(GRID[0])), int(rng.integers(GRID[1])))
            mask = paint_missing_field(section, grid=GRID, field=field, value=0.0)
        elif kind == "charging":
            mask = paint_charging(section, rng=rng, share=float(rng.uniform(0.25, 0.45)))
        else:
            mask = np.zeros(section.shape, dtype=bool)
        cover = {
            (fx, fy): float(mask[field_box(section.shape, grid=GRID, field=(fx, fy))].mean())
            for fx in range(GRID[0])
            for fy in range(GRID[1])
        }
        truth.append({"z": z, "kind": kind, "cover": cover})
    return out, truth


def train(clean: np.ndarray, seed: int) -> Any:
    """The QC test's recipe on patches of other (clean) sections of the same tissue."""
    rng = np.random.default_rng(seed)
    patches = np.stack(
        [s[y : y + PATCH, x : x + PATCH] for s in clean
         for y in range(0, s.shape[0] - PATCH + 1, PATCH)
         for x in range(0, s.shape[1] - PATCH + 1, PATCH)]
    ).astype(np.float32)  # fmt: skip
    blank, bright = patches.copy(), patches.copy()
    for b, c in zip(blank, bright, strict=True):
        share = int(rng.uniform(0.5, 1.0) * PATCH)
        b[:, :share] = rng.choice([0.0, 255.0])
        c[:, :share] = np.clip(c[:, :share] + 90.0, 0, 255)
    mean, std = float(patches.mean()), float(patches.std()) or 1.0
    x = (np.concatenate([patches, blank, bright]) - mean) / std
    y = np.concatenate([np.zeros(len(patches)), np.ones(2 * len(patches))])
    result = train_classifier(
        x[:, None], y, epochs=8, min_epochs=3, patience=4, tta=1, device="cpu"
    )
    return result.model.eval(), (mean, std)


def predict_volume(
    sections: np.ndarray, classifier: Any, norm: tuple[float, float], work: Path
) -> dict:
    n, side, _ = sections.shape
    ds = wk.Dataset(work / "ds", voxel_size=(4, 4, 40), exist_ok=True)
    color = ds.add_layer("color", wk.COLOR_CATEGORY, dtype="uint8", data_format="zarr3")
    mag = color.add_mag(1)
    mag.write(sections.transpose(2, 1, 0)[None], absolute_offset=(0, 0, 0), allow_resize=True)
    row = types.SimpleNamespace(
        name="qc bench", path=str(work / "ds"), mag="1-1-1", layer="color",
        voxel_size=(4.0, 4.0, 40.0), settings={}, bbox_x=0, bbox_y=0, bbox_z=0,
        bbox_w=side, bbox_h=side, bbox_d=n, patch_size=PATCH,
    )  # fmt: skip
    plan = predict.make_plan(row, {}, out_root=work / "out", threshold=0.5)
    predict.create_output(plan, voxel_size=row.voxel_size)
    with PatchSource.open(work / "ds") as source:
        n_chunks = predict.predict_in_process(plan, source, classifier, norm=norm, temperature=1.0)
    return finish_prediction(
        plan, n_chunks=n_chunks, dataset=row, settings=Settings(data_dir=work / "data")
    )


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 3) if b else None


def score(report: dict, truth: list[dict]) -> dict:
    bad = {t["z"] for t in truth if t["kind"] != "clean"}
    flagged = set(report["reimage_sections"])
    old_rule = {s["z"] for s in report["sections"] if s["fraction"] >= 0.5}
    fields_flagged = {(f["z"], *f["field"]) for f in report["fields"] if f["reimage"]}
    cover = {(t["z"], *k): v for t in truth for k, v in t["cover"].items()}
    wanted = {k for k, v in cover.items() if v >= 0.5}
    found = wanted & fields_flagged
    right = {k for k in fields_flagged if cover.get(k, 0.0) >= 0.25}
    by_kind = {
        kind: _ratio(len({t["z"] for t in truth if t["kind"] == kind} & flagged),
                     sum(t["kind"] == kind for t in truth))
        for kind in ("missing", "charging")
    }  # fmt: skip
    return {
        "sections": len(truth),
        "defective_sections": len(bad),
        "section_recall": _ratio(len(bad & flagged), len(bad)),
        "section_precision": _ratio(len(bad & flagged), len(flagged)),
        "section_recall_by_kind": by_kind,
        "clean_sections_flagged": len(flagged - bad),
        "old_rule_section_recall": _ratio(len(bad & old_rule), len(bad)),
        "defective_fields": len(wanted),
        "fields_flagged": len(fields_flagged),
        "field_recall": _ratio(len(found), len(wanted)),
        "field_precision": _ratio(len(right), len(fields_flagged)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/qc_reimage.json"))
    ap.add_argument("--cache", type=Path, default=Path(".real_tissue/downloads"))
    ap.add_argument(
        "--volumes",
        default="synthetic,cremi-c,tau-tem",
        help="comma-separated: synthetic and/or names of server.sim.real_tissue.VOLUMES",
    )
    ap.add_argument("--sections", type=int, default=24, help="painted sections per volume")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    for name in args.volumes.split(","):
        started = time.time()
        try:
            if name == "synthetic":
                volume = synthetic_sections(args.sections + 4, 840, args.seed)
            else:
                volume = real_sections(name, args.cache, 560)
        except Exception as exc:  # a volume that cannot be had is reported, not fatal
            results[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
            print(f"{name}: skipped ({exc})")
            continue
        train_part, test_part = volume[:4], volume[4 : 4 + args.sections]
        rng = np.random.default_rng(args.seed)
        painted, truth = paint(test_part, rng)
        classifier, norm = train(train_part, args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            report = predict_volume(painted, classifier, norm, Path(tmp))
            fields_csv = Path(report["fields_csv"]).read_text()
        report["fields"] = _fields(fields_csv)
        results[name] = {
            **score(report, truth),
            "section_side_px": int(painted.shape[1]),
            "seconds": round(time.time() - started, 1),
        }
        print(name, json.dumps(results[name]))
    out = {
        "command": "python bench/qc_reimage.py " + " ".join(sys.argv[1:]),
        "defaults": {"field_grid": "4x4", "field_rate": 0.5, "reimage_rate": 0.5, "stride": 32},
        "machine": (
            f"{platform.processor() or platform.machine()}, python {platform.python_version()}, "
            f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end"
        ),
        "volumes": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


def _fields(text: str) -> list[dict]:
    import csv
    import io

    return [
        {
            "z": int(r["z"]),
            "field": [int(r["field_x"]), int(r["field_y"])],
            "reimage": r["reimage"] == "1",
        }
        for r in csv.DictReader(io.StringIO(text))
    ]


if __name__ == "__main__":
    main()
