"""Several annotators on the same patches: consensus and reliability (Dawid-Skene), Cohen's
kappa per pair and Krippendorff's alpha, with bootstrap intervals over patches (NumPy only).

Input everywhere: (patch, annotator, verdict) triples, verdict 1 = artifact, 0 = clean; a
patch and an annotator are any hashable keys. When an annotator judged a patch twice, the
later triple (in list order) is their verdict. Where a figure cannot be estimated it is None
with a reason in words, never NaN.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Triple = tuple[Hashable, Hashable, int]

# Dawid-Skene prior: each annotator starts as if they had given PRIOR_STRENGTH labels of each
# class with PRIOR_ACCURACY right, so a few labels never estimate a rate at 0 or 1.
PRIOR_ACCURACY = 0.8
PRIOR_STRENGTH = 4.0
MAX_ITERATIONS = 500
TOLERANCE = 1e-7
RESAMPLES = 1000
# a bootstrap interval needs the statistic defined in at least this share of the resamples
MIN_DEFINED_SHARE = 0.9


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% bootstrap interval and the number of patches it rests on."""

    value: float | None
    interval: tuple[float, float] | None
    n: int
    reason: str | None = None


@dataclass(frozen=True)
class AnnotatorQuality:
    """One annotator as the Dawid-Skene model sees them."""

    annotator: Hashable
    labels: int  # all their verdicts
    shared: int  # verdicts on patches someone else judged too: what the estimates rest on
    sensitivity: float | None  # P(says artifact | artifact)
    specificity: float | None  # P(says clean | clean)
    reliability: float | None  # balanced accuracy, (sensitivity + specificity) / 2
    agreement: float | None  # expected share of their shared verdicts the consensus holds
    reason: str | None  # why the figures are None (uninformative), else None


@dataclass(frozen=True)
class Consensus:
    patches: list[Hashable]
    p_artifact: np.ndarray  # per patch, in the order of ``patches``
    labels_per_patch: np.ndarray
    prevalence: float
    annotators: list[AnnotatorQuality]
    iterations: int


@dataclass(frozen=True)
class PairKappa:
    first: Hashable
    second: Hashable
    kappa: Estimate


@dataclass(frozen=True)
class _Table:
    patches: list[Hashable]
    annotators: list[Hashable]
    patch: np.ndarray  # per verdict: index into patches
    annotator: np.ndarray  # per verdict: index into annotators
    verdict: np.ndarray  # per verdict: 0 or 1


def _table(triples: Sequence[Triple]) -> _Table:
    last: dict[tuple[Hashable, Hashable], int] = {}
    for patch, annotator, verdict in triples:
        if verdict not in (0, 1):
            raise ValueError(f"a verdict is 0 (clean) or 1 (artifact), not {verdict!r}")
        last[(patch, annotator)] = int(verdict)
    patches = list(dict.fromkeys(p for p, _ in last))
    annotators = list(dict.fromkeys(a for _, a in last))
    p_index = {p: i for i, p in enumerate(patches)}
    a_index = {a: i for i, a in enumerate(annotators)}
    keys = list(last)
    return _Table(
        patches=patches,
        annotators=annotators,
        patch=np.array([p_index[p] for p, _ in keys], dtype=np.int64),
        annotator=np.array([a_index[a] for _, a in keys], dtype=np.int64),
        verdict=np.array([last[k] for k in keys], dtype=np.int64),
    )


def _overlap_groups(t: _Table, shared: np.ndarray) -> np.ndarray:
    """Per annotator, how many annotators their group has: those linked by shared patches."""
    parent = list(range(len(t.annotators)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_on_patch: dict[int, int] = {}
    for p, a in zip(t.patch[shared].tolist(), t.annotator[shared].tolist(), strict=True):
        other = first_on_patch.setdefault(p, a)
        parent[root(a)] = root(other)
    roots = np.array([root(i) for i in range(len(t.annotators))], dtype=np.int64)
    in_group = np.zeros(len(t.annotators), dtype=bool)
    in_group[np.unique(t.annotator[shared])] = True
    sizes = np.bincount(roots[in_group], minlength=len(t.annotators))
    return np.where(in_group, sizes[roots], 0)


def dawid_skene(
    triples: Sequence[Triple],
    *,
    prior_accuracy: float = PRIOR_ACCURACY,
    prior_strength: float = PRIOR_STRENGTH,
    weights: Mapping[Hashable, float] | None = None,
    model: Mapping[Hashable, float] | None = None,
) -> Consensus:
    """Consensus P(artifact) per patch and each annotator's sensitivity and specificity,
    estimated jointly by EM (Dawid & Skene 1979, two classes) with a Beta prior on the rates.

    Only patches with two or more verdicts inform the rates; a patch judged once keeps that
    verdict (there is nothing to weigh it against). Error rates are identifiable only where
    at least three annotators are linked by shared patches: with two, only their agreement
    is measured, so their rates are reported as uninformative.

    ``weights``: per annotator, how much their verdicts count in the consensus (default 1; an
    annotator left out counts fully): each verdict's log-likelihood ratio is scaled by it (a
    tempered likelihood), so 0.5 counts half and 0 not at all. An annotator's own rates are
    still estimated from all of their verdicts.

    ``model``: per patch, a model's P(artifact) from a model that never saw the patch's labels
    (out of fold), as one more rater (CROWDLAB-style): it takes the place of the prevalence as
    the patch's prior, so a patch judged once informs its annotator's rates too, and an
    annotator who shares no patch with anyone is measured against the model. Patches without
    a view are as before."""
    t = _table(triples)
    weights = weights or {}
    for name, w in weights.items():
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"the weight of annotator {name!r} is {w!r}, not within [0, 1]")
    per_annotator = np.array([float(weights.get(a, 1.0)) for a in t.annotators])
    n_patches, n_annotators = len(t.patches), len(t.annotators)
    labels_per_patch = np.bincount(t.patch, minlength=n_patches)
    prior_logit, viewed = _model_view(t, model)
    multi = (labels_per_patch >= 2) | viewed
    shared = multi[t.patch]
    verdict = t.verdict.astype(np.float64)

    # start from the (weighted) soft majority vote
    w_all = per_annotator[t.annotator] if n_annotators else np.zeros(0)
    sums = np.bincount(t.patch, weights=verdict * w_all, minlength=n_patches)
    totals = np.bincount(t.patch, weights=w_all, minlength=n_patches)
    p = np.where(totals > 0, sums / np.maximum(totals, 1e-12), 0.5)
    single = (labels_per_patch == 1) & ~viewed
    p[single] = np.bincount(t.patch, weights=verdict, minlength=n_patches)[single]
    right, wrong = prior_strength * prior_accuracy, prior_strength * (1 - prior_accuracy)
    sp, sa, sv = t.patch[shared], t.annotator[shared], verdict[shared]
    sensitivity = np.full(n_annotators, prior_accuracy)
    specificity = np.full(n_annotators, prior_accuracy)
    prevalence = 0.5
    iterations = 0
    while iterations < MAX_ITERATIONS:
        iterations += 1
        # M step: rates from the current soft consensus, smoothed by the prior
        prevalence = (1.0 + p.sum()) / (2.0 + n_patches)
        q = p[sp]
        said_artifact = np.bincount(sa, weights=q * sv, minlength=n_annotators)
        artifacts = np.bincount(sa, weights=q, minlength=n_annotators)
        said_clean = np.bincount(sa, weights=(1 - q) * (1 - sv), minlength=n_annotators)
        cleans = np.bincount(sa, weights=1 - q, minlength=n_annotators)
        sensitivity = (right + said_artifact) / (right + wrong + artifacts)
        specificity = (right + said_clean) / (right + wrong + cleans)
        # E step: posterior of each multiply judged patch
        weight_if_1 = np.where(
            sv == 1, np.log(sensitivity[sa] / (1 - specificity[sa])),
            np.log((1 - sensitivity[sa]) / specificity[sa]),
        )  # fmt: skip
        prior = np.where(viewed, prior_logit, np.log(prevalence / (1 - prevalence)))
        log_odds = prior + np.bincount(
            sp, weights=weight_if_1 * per_annotator[sa], minlength=n_patches
        )
        updated = np.where(multi, 1.0 / (1.0 + np.exp(-np.clip(log_odds, -700, 700))), p)
        change = float(np.max(np.abs(updated - p))) if n_patches else 0.0
        p = updated
        if change < TOLERANCE:
            break

    q = p[t.patch]
    agrees = np.where(t.verdict == 1, q, 1 - q)
    group = _overlap_groups(t, labels_per_patch[t.patch] >= 2)
    # with the model as a rater of known calibration, its view alone identifies the rates
    measured = np.isin(np.arange(n_annotators), t.annotator[viewed[t.patch]])
    qualities = []
    for j, name in enumerate(t.annotators):
        mine = t.annotator == j
        n_shared = int((mine & shared).sum())
        reason = None
        if n_shared == 0:
            reason = "none of their labels is on a patch another annotator labelled" + (
                " or the model judged" if model is not None else ""
            )
        elif group[j] < 3 and not measured[j]:
            reason = (
                "only two annotators share patches: their agreement is measured, "
                "not which of them is right"
            )
        informative = reason is None
        qualities.append(
            AnnotatorQuality(
                annotator=name,
                labels=int(mine.sum()),
                shared=n_shared,
                sensitivity=float(sensitivity[j]) if informative else None,
                specificity=float(specificity[j]) if informative else None,
                reliability=float((sensitivity[j] + specificity[j]) / 2) if informative else None,
                agreement=float(agrees[mine & shared].mean()) if n_shared else None,
                reason=reason,
            )
        )
    return Consensus(
        patches=t.patches,
        p_artifact=p,
        labels_per_patch=labels_per_patch,
        prevalence=float(prevalence),
        annotators=qualities,
        iterations=iterations,
    )


def _model_view(t: _Table, model: Mapping[Hashable, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """Per patch of ``t``: the model's log-odds of artifact (0 where it has no view), and
    whether it has one. Probabilities are clipped to [1e-4, 1 - 1e-4]: no model is certain."""
    logit = np.zeros(len(t.patches))
    viewed = np.zeros(len(t.patches), dtype=bool)
    for i, patch in enumerate(t.patches):
        p = (model or {}).get(patch)
        if p is None or not np.isfinite(p):
            continue
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"the model's P(artifact) of patch {patch!r} is {p!r}, not in [0, 1]")
        q = min(max(float(p), 1e-4), 1 - 1e-4)
        logit[i], viewed[i] = np.log(q / (1 - q)), True
    return logit, viewed


def cohen_kappa(first: np.ndarray, second: np.ndarray) -> float | None:
    """Cohen's kappa of two raters' 0/1 verdicts on the same patches; None when undefined
    (no patches, or both gave one and the same class throughout: chance agreement is 1)."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    if a.size == 0:
        return None
    observed = float(np.mean(a == b))
    pa, pb = float(a.mean()), float(b.mean())
    chance = pa * pb + (1 - pa) * (1 - pb)
    if chance >= 1.0:
        return None
    return (observed - chance) / (1 - chance)


def _resample_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n`` units is drawn, per bootstrap resample: (resamples, n)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def _interval(values: np.ndarray) -> tuple[tuple[float, float] | None, str | None]:
    defined = values[np.isfinite(values)]
    if defined.size < MIN_DEFINED_SHARE * values.size:
        undefined = values.size - defined.size
        return None, f"undefined in {undefined} of {values.size} bootstrap resamples"
    lo, hi = np.percentile(defined, [2.5, 97.5])
    return (float(lo), float(hi)), None


def _kappa_estimate(
    a: np.ndarray, b: np.ndarray, *, resamples: int, rng: np.random.Generator
) -> Estimate:
    n = int(a.size)
    if n == 0:
        return Estimate(None, None, 0, "no patch labelled by both")
    kappa = cohen_kappa(a, b)
    if kappa is None:
        only = "artifact" if a[0] == 1 else "clean"
        return Estimate(None, None, n, f"both said only {only} on their {n} shared patch(es)")
    w = _resample_weights(n, resamples, rng)
    observed = w @ (a == b).astype(np.float64) / n
    pa, pb = w @ a.astype(np.float64) / n, w @ b.astype(np.float64) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = np.where(chance < 1 - 1e-12, (observed - chance) / (1 - chance), np.nan)
    interval, why = _interval(draws)
    return Estimate(kappa, interval, n, why)


def pairwise_kappa(
    triples: Sequence[Triple], *, resamples: int = RESAMPLES, seed: int = 0
) -> list[PairKappa]:
    """Cohen's kappa for every pair of annotators over the patches both judged, with a 95%
    percentile bootstrap interval over those patches (seeded: the same input, the same
    interval)."""
    t = _table(triples)
    n_patches = len(t.patches)
    grid = np.full((len(t.annotators), n_patches), -1, dtype=np.int64)
    grid[t.annotator, t.patch] = t.verdict
    pairs = []
    for i in range(len(t.annotators)):
        for j in range(i + 1, len(t.annotators)):
            both = (grid[i] >= 0) & (grid[j] >= 0)
            rng = np.random.default_rng([seed, i, j])
            estimate = _kappa_estimate(grid[i, both], grid[j, both], resamples=resamples, rng=rng)
            pairs.append(PairKappa(t.annotators[i], t.annotators[j], estimate))
    return pairs


def _alpha_from_counts(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Nominal alpha from per-unit value counts (units x values), once per weight row."""
    m = counts.sum(axis=1)
    # per unit: the off-diagonal coincidences, sum over c != k of n_uc n_uk / (m_u - 1)
    disagreement = (m**2 - (counts**2).sum(axis=1)) / (m - 1)
    observed = weights @ disagreement
    n_c = weights @ counts
    n = n_c.sum(axis=1)
    expected = n**2 - (n_c**2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected > 0, 1.0 - (n - 1) * observed / expected, np.nan)


def krippendorff_alpha(
    triples: Sequence[tuple[Hashable, Hashable, Hashable]],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Estimate:
    """Krippendorff's alpha for nominal values over all annotators (any number per patch,
    missing verdicts allowed), with a 95% bootstrap interval over patches; n is the number
    of pairable patches (two or more verdicts). Values may be any hashable categories.

    alpha = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k, with o_ck the coincidence
    matrix (Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011)."""
    last: dict[tuple[Hashable, Hashable], Hashable] = {}
    for patch, annotator, value in triples:
        last[(patch, annotator)] = value
    values = list(dict.fromkeys(last.values()))
    units = list(dict.fromkeys(p for p, _ in last))
    u_index = {u: i for i, u in enumerate(units)}
    v_index = {v: i for i, v in enumerate(values)}
    counts = np.zeros((len(units), len(values)), dtype=np.float64)
    for (patch, _), value in last.items():
        counts[u_index[patch], v_index[value]] += 1
    counts = counts[counts.sum(axis=1) >= 2]
    n = int(counts.shape[0])
    if n == 0:
        return Estimate(None, None, 0, "no patch has two or more labels")
    alpha = float(_alpha_from_counts(counts, np.ones((1, n)))[0])
    if not np.isfinite(alpha):
        return Estimate(None, None, n, "every label on the shared patches is the same class")
    rng = np.random.default_rng(seed)
    draws = _alpha_from_counts(counts, _resample_weights(n, resamples, rng))
    interval, why = _interval(draws)
    return Estimate(alpha, interval, n, why)
