"""Consensus and agreement of several annotators on tiny arrays, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from models.consensus import (
    PRIOR_ACCURACY,
    cohen_kappa,
    dawid_skene,
    krippendorff_alpha,
    pairwise_kappa,
)


def _triples(**rows: list[int | None]) -> list[tuple[int, str, int]]:
    """Annotator name -> their verdict per patch (None: not labelled)."""
    return [(u, name, v) for name, row in rows.items() for u, v in enumerate(row) if v is not None]


def test_kappa_of_a_hand_computed_two_by_two_table() -> None:
    # both artifact 20, first only 5, second only 10, both clean 15 (n = 50):
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = 0.2 / 0.5 = 0.4
    first = np.r_[np.ones(20), np.ones(5), np.zeros(10), np.zeros(15)]
    second = np.r_[np.ones(20), np.zeros(5), np.ones(10), np.zeros(15)]
    assert cohen_kappa(first, second) == pytest.approx(0.4)
    assert cohen_kappa(first, first) == pytest.approx(1.0)


def test_pairwise_kappa_has_an_interval_n_and_is_the_same_with_the_same_seed() -> None:
    rng = np.random.default_rng(3)
    truth = rng.random(80) < 0.4
    a = truth.astype(int)
    b = (truth ^ (rng.random(80) < 0.15)).astype(int)
    c = [int(v) if i % 2 else None for i, v in enumerate(truth)]  # every other patch
    triples = _triples(a=list(a), b=list(b), c=c)
    pairs = pairwise_kappa(triples, seed=5)
    by_pair = {(p.first, p.second): p.kappa for p in pairs}
    assert set(by_pair) == {("a", "b"), ("a", "c"), ("b", "c")}
    ab = by_pair[("a", "b")]
    assert ab.n == 80 and ab.value == pytest.approx(cohen_kappa(a, b))
    assert ab.interval is not None and ab.interval[0] < ab.value < ab.interval[1]
    assert by_pair[("a", "c")].n == 40 and by_pair[("a", "c")].value == pytest.approx(1.0)
    assert pairwise_kappa(triples, seed=5) == pairs
    assert pairwise_kappa(triples, seed=6)[0].kappa.interval != ab.interval


def test_kappa_of_the_genem3_disagreement_pattern() -> None:
    """58 patches artifact/clean and 37 clean/artifact: p_o = 0, p_e = 2 * 58 * 37 / 95^2."""
    ak = [1] * 58 + [0] * 37
    flo = [0] * 58 + [1] * 37
    (pair,) = pairwise_kappa(_triples(AK=ak, Flo=flo))
    chance = 2 * 58 * 37 / 95**2
    assert pair.kappa.value == pytest.approx(-chance / (1 - chance))
    assert pair.kappa.value == pytest.approx(-0.9068, abs=1e-4)
    assert pair.kappa.n == 95 and pair.kappa.interval is not None
    lo, hi = pair.kappa.interval
    assert -1.0 <= lo < pair.kappa.value < hi < 0


def test_alpha_equals_krippendorffs_binary_example() -> None:
    """Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section A: two
    observers, ten units, binary values; alpha = 0.095."""
    example = _triples(c=[0, 1, 0, 0, 0, 0, 0, 0, 1, 0], k=[1, 1, 1, 0, 0, 1, 0, 0, 0, 0])
    alpha = krippendorff_alpha(example)
    assert alpha.value == pytest.approx(1 - 19 * 4 / (14 * 6))
    assert round(alpha.value, 3) == 0.095
    assert alpha.n == 10 and alpha.interval is not None


def test_alpha_equals_krippendorffs_nominal_example_with_missing_values() -> None:
    """Krippendorff (2011), section C: four observers, twelve units, values 1-5, missing data;
    nominal alpha = 0.743 (unit 12 has one value and is not pairable)."""
    n = None
    example = _triples(
        A=[1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        B=[1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        C=[n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        D=[1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    )
    alpha = krippendorff_alpha(example)
    assert round(alpha.value, 3) == 0.743
    assert alpha.n == 11
    assert krippendorff_alpha(example) == alpha  # seeded bootstrap


def test_dawid_skene_finds_the_planted_noisy_annotator() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(200) < 0.3
    flips = {"a": 0.0, "b": 0.0, "noisy": 0.2}
    triples = [
        (i, name, int(truth[i] ^ (rng.random() < rate)))
        for name, rate in flips.items()
        for i in range(truth.size)
    ]
    consensus = dawid_skene(triples)
    by_name = {q.annotator: q for q in consensus.annotators}
    assert all(q.reason is None and q.shared == 200 and q.labels == 200 for q in by_name.values())
    reliability = {name: q.reliability for name, q in by_name.items()}
    assert min(reliability, key=lambda name: reliability[name]) == "noisy"
    assert reliability["noisy"] == pytest.approx(0.8, abs=0.06)
    assert reliability["a"] > 0.95
    assert by_name["noisy"].agreement < by_name["a"].agreement
    recovered = consensus.p_artifact > 0.5
    order = [consensus.patches.index(i) for i in range(truth.size)]
    assert (recovered[order] == truth).mean() > 0.97
    assert consensus.prevalence == pytest.approx(truth.mean(), abs=0.05)


def test_few_labels_are_not_estimated_at_zero_or_one() -> None:
    """Three annotators on two patches who always agree: the prior keeps rates below 1."""
    consensus = dawid_skene(_triples(a=[1, 0], b=[1, 0], c=[1, 0]))
    for q in consensus.annotators:
        assert q.sensitivity is not None and PRIOR_ACCURACY < q.sensitivity < 1
        assert q.specificity is not None and PRIOR_ACCURACY < q.specificity < 1
        assert q.shared == 2


def test_one_annotator_per_patch_keeps_each_verdict_and_says_rates_are_unknown() -> None:
    triples = [(0, "a", 1), (1, "a", 0), (2, "b", 1), (3, "c", 0)]
    consensus = dawid_skene(triples)
    assert consensus.p_artifact.tolist() == [1.0, 0.0, 1.0, 0.0]
    for q in consensus.annotators:
        assert q.reliability is None and q.sensitivity is None and q.agreement is None
        assert q.shared == 0 and "another annotator" in (q.reason or "")
    assert [q.labels for q in consensus.annotators] == [2, 1, 1]
    for pair in pairwise_kappa(triples):
        assert pair.kappa.value is None and pair.kappa.n == 0
        assert pair.kappa.reason == "no patch labelled by both"
    alpha = krippendorff_alpha(triples)
    assert alpha.value is None and alpha.n == 0 and "two or more" in (alpha.reason or "")


def test_two_annotators_only_measure_agreement_not_who_is_right() -> None:
    consensus = dawid_skene(_triples(AK=[1] * 58 + [0] * 37, Flo=[0] * 58 + [1] * 37))
    assert np.allclose(consensus.p_artifact, 0.5)  # nothing says which of the two is right
    for q in consensus.annotators:
        assert q.reliability is None and "two annotators" in (q.reason or "")
        assert q.agreement == pytest.approx(0.5) and q.shared == 95


def test_all_one_class_gives_reasons_not_nan() -> None:
    triples = _triples(a=[0, 0, 0], b=[0, 0, 0])
    (pair,) = pairwise_kappa(triples)
    assert pair.kappa.value is None and pair.kappa.n == 3
    assert pair.kappa.reason == "both said only clean on their 3 shared patch(es)"
    alpha = krippendorff_alpha(triples)
    assert alpha.value is None and alpha.n == 3 and "same class" in (alpha.reason or "")
    assert dawid_skene([]).patches == [] and pairwise_kappa([]) == []
    assert krippendorff_alpha([]).value is None


def test_an_interval_that_the_resamples_cannot_support_is_left_out_with_a_reason() -> None:
    """One disagreement among many agreeing clean patches: most resamples lose it."""
    (pair,) = pairwise_kappa(_triples(a=[1] + [0] * 30, b=[0] + [0] * 30))
    assert pair.kappa.value == pytest.approx(0.0)
    assert pair.kappa.interval is None and "bootstrap resamples" in (pair.kappa.reason or "")


def test_the_later_verdict_of_the_same_annotator_counts_and_verdicts_are_checked() -> None:
    consensus = dawid_skene([(0, "a", 1), (0, "a", 0)])
    assert consensus.p_artifact.tolist() == [0.0] and consensus.annotators[0].labels == 1
    with pytest.raises(ValueError, match="verdict"):
        dawid_skene([(0, "a", 2)])


def test_weights_scale_an_annotators_say_and_weight_zero_is_leaving_them_out() -> None:
    truth = [1, 1, 1, 0, 0, 0, 0, 0]
    triples = [(p, a, t) for p, t in enumerate(truth) for a in ("a", "b")]
    triples += [(p, "c", 1 - t if p == 0 else t) for p, t in enumerate(truth)]  # c errs once
    triples += [(0, "d", 0)]  # and d sides with c there
    full = dawid_skene(triples)
    half = dawid_skene(triples, weights={"c": 0.5, "d": 0.5})
    zero = dawid_skene(triples, weights={"c": 0.0, "d": 0.0})
    alone = dawid_skene([t for t in triples if t[1] not in ("c", "d")])
    np.testing.assert_allclose(zero.p_artifact, alone.p_artifact, atol=1e-6)
    # less say for c and d: the consensus on patch 0 moves towards a and b
    assert full.p_artifact[0] < half.p_artifact[0] < zero.p_artifact[0]
    with pytest.raises(ValueError, match="not within"):
        dawid_skene(triples, weights={"c": 1.5})


def _model_view(
    truth: np.ndarray, rng: np.random.Generator, *, accuracy: float
) -> dict[int, float]:
    """An out-of-fold model's calibrated P(artifact): right with ``accuracy``, at that
    confidence."""
    right = rng.random(truth.size) < accuracy
    return {i: accuracy if truth[i] == right[i] else 1 - accuracy for i in range(truth.size)}


def test_a_model_view_ranks_annotators_who_share_no_patch() -> None:
    """Every patch labelled once (no overlap at all): without the model nothing is known of
    anyone; with an out-of-fold model as one more rater the noisy annotator ranks lowest and
    their flipped labels are the ones the consensus turns."""
    rng = np.random.default_rng(1)
    truth = rng.random(300) < 0.3
    flips = {"a": 0.0, "b": 0.0, "noisy": 0.2}
    names = list(flips)
    triples, flipped = [], []
    for i in range(truth.size):
        name = names[i % 3]
        flip = bool(rng.random() < flips[name])
        triples.append((i, name, int(truth[i] ^ flip)))
        flipped.append(flip)
    assert all(q.reliability is None for q in dawid_skene(triples).annotators)

    consensus = dawid_skene(triples, model=_model_view(truth, rng, accuracy=0.9))
    by_name = {q.annotator: q for q in consensus.annotators}
    assert all(q.reason is None and q.shared == 100 for q in by_name.values())
    reliability = {name: q.reliability for name, q in by_name.items()}
    assert min(reliability, key=lambda name: reliability[name]) == "noisy"
    assert reliability["noisy"] < 0.85 < min(reliability["a"], reliability["b"])
    turned = (consensus.p_artifact > 0.5) != np.array([v for _, _, v in triples], dtype=bool)
    flipped_arr = np.array(flipped)
    assert turned[flipped_arr].mean() > 0.6  # most flips are turned back
    assert turned[~flipped_arr].mean() < 0.1  # few right labels are


def test_a_model_view_is_checked_and_patches_without_one_keep_their_verdict() -> None:
    triples = [(0, "a", 1), (1, "b", 0), (2, "c", 1)]
    consensus = dawid_skene(triples, model={0: 0.1, 1: float("nan")})
    assert consensus.p_artifact[1] == 0.0 and consensus.p_artifact[2] == 1.0
    assert 0.0 < consensus.p_artifact[0] < 1.0
    with pytest.raises(ValueError, match="not in"):
        dawid_skene(triples, model={0: 1.5})
