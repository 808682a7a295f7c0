"""The real-tissue benchmark's validation mode never shows a test section to a choice."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("real_tissue_bench", ROOT / "bench/real_tissue.py")
assert spec is not None and spec.loader is not None
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_validation_sections_are_a_fifth_of_the_non_test_sections() -> None:
    depth, every = 61, 5
    sections = np.arange(depth, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    kept = bench.without_test_sections(sections, every)
    ids = kept[:, 0, 0].astype(int)
    test = set(range(0, depth, every))  # what simulate holds out of the whole volume
    assert not test & set(ids.tolist()), "no test section is in the validation run"
    assert len(ids) == depth - len(test)
    assert (np.diff(ids) > 0).all(), "the sections keep their order"
    validation = ids[::every]  # what simulate holds out of the validation run's volume
    assert len(validation) == -(-len(ids) // every)
    assert not test & set(validation.tolist())
