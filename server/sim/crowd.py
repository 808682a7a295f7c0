"""Simulated annotators with error rates: ``simulate --annotators a:0,b:0,c:0.2``.

Each proposal is labelled by the annotator with the fewest labels so far among those who have
not yet labelled that patch (a patch asked for twice goes to someone else), who reports the
ground truth, flipped with their error rate. The crowd remembers which labels it flipped, so a
curve can say how well the service tells the noisy annotator apart (estimated reliability) and
how many flipped labels its label-error list recovers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.errors import InvalidInput
from server.labels.consensus import LABEL_AGGREGATIONS as LABEL_AGGREGATIONS  # simulate's choices

NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,40}$")
# the reliability ranking is read once an annotator has given this many labels
RANKED_AFTER = 100


# a label-error list is measured by whether it holds this share of the flipped labels at
# this precision, and the benchmarks try these suspect thresholds on every checked label's
# recorded P(wrong)
WANTED_RECALL, WANTED_PRECISION = 0.7, 0.5
SWEEP = tuple(round(0.1 + 0.025 * i, 3) for i in range(17))  # 0.1 .. 0.5


def recovery(found: Sequence[bool], flipped: int) -> dict[str, Any]:
    """A suspect list against the flipped labels, from whether each suspect is a flipped one:
    the share of the flipped labels it holds (recall) and of its suspects that are flipped
    (precision); None where there is nothing to divide by."""
    hits = sum(found)
    return {
        "recall": hits / flipped if flipped else None,
        "precision": hits / len(found) if found else None,
        "suspects": len(found),
        "flipped": flipped,
    }


def recovery_at(scores: Sequence[Sequence[Any]], flipped: int, *, at: float) -> dict[str, Any]:
    """:func:`recovery` of the labels whose P(wrong) is at least ``at``, from (P(wrong),
    flipped) pairs."""
    return recovery([bool(f) for wrong, f in scores if wrong >= at], flipped)


def passes(found: dict[str, Any]) -> bool:
    """Whether a :func:`recovery` reaches the wanted recall and precision."""
    return (found["recall"] or 0.0) >= WANTED_RECALL and (
        found["precision"] or 0.0
    ) >= WANTED_PRECISION


@dataclass(frozen=True)
class SimulatedAnnotator:
    name: str
    error_rate: float


def parse_annotators(spec: str, *, reserved: str) -> tuple[SimulatedAnnotator, ...]:
    """``"a:0,b:0,c:0.2"``: names and the share of their labels that are flipped."""
    found: list[SimulatedAnnotator] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, rate = part.partition(":")
        name = name.strip()
        if not NAME.match(name):
            raise InvalidInput(
                f"annotator {name!r}: use 1-40 letters, digits, '.', '_' or '-' (in {spec!r})"
            )
        if name == reserved:
            raise InvalidInput(f"annotator name {name!r} is taken by the audit set's oracle")
        try:
            error = float(rate) if sep else 0.0
        except ValueError:
            raise InvalidInput(f"annotator {name}: error rate {rate!r} is not a number") from None
        if not 0.0 <= error <= 1.0:
            raise InvalidInput(f"annotator {name}: error rate {error} is not within 0 and 1")
        found.append(SimulatedAnnotator(name, error))
    names = [a.name for a in found]
    if len(set(names)) != len(names):
        raise InvalidInput(f"annotator names repeat in {spec!r}")
    if not found:
        raise InvalidInput("--annotators names no annotator (e.g. a:0,b:0,c:0.2)")
    return tuple(found)


def format_annotators(annotators: tuple[SimulatedAnnotator, ...]) -> str:
    return ",".join(f"{a.name}:{a.error_rate:g}" for a in annotators)


@dataclass
class Crowd:
    """The simulated annotators of one curve (one seed): who labels what, and what they say."""

    annotators: tuple[SimulatedAnnotator, ...]
    seed: int
    given: dict[str, int] = field(default_factory=dict)
    seen: dict[int, set[str]] = field(default_factory=dict)  # grid index -> who labelled it
    flipped: set[int] = field(default_factory=set)  # label ids that contradict the truth
    ranking_at: dict[str, Any] | None = None
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng([self.seed, 7919])
        self.given = {a.name: 0 for a in self.annotators}

    def choose(self, grid_index: int) -> SimulatedAnnotator | None:
        """The least busy annotator who has not labelled this patch; None when all have."""
        done = self.seen.get(grid_index, set())
        free = [a for a in self.annotators if a.name not in done]
        if not free:
            return None
        return min(free, key=lambda a: self.given[a.name])

    def verdict(self, who: SimulatedAnnotator, truth: bool) -> tuple[bool, bool]:
        """What ``who`` answers for a patch whose truth is ``truth``, and whether it is flipped."""
        flip = bool(self.rng.random() < who.error_rate)
        return truth != flip, flip

    def record(self, who: SimulatedAnnotator, grid_index: int, label_id: int, flip: bool) -> None:
        self.given[who.name] += 1
        self.seen.setdefault(grid_index, set()).add(who.name)
        if flip:
            self.flipped.add(label_id)

    def ranking_shortfall(self) -> int:
        """How many labels the noisiest annotator still lacks before the reliability ranking
        is read (0 once it was read, or when nobody is noisier than the rest)."""
        noisiest = max(self.annotators, key=lambda a: a.error_rate)
        if self.ranking_at is not None or all(
            a.error_rate >= noisiest.error_rate for a in self.annotators
        ):
            return 0
        return max(RANKED_AFTER - self.given[noisiest.name], 0)

    def observe(self, reliabilities: dict[str, float | None], labels: int) -> dict[str, Any]:
        """Per annotator: labels given, labels flipped so far and the service's estimated
        reliability; the first time the noisiest annotator has given ``RANKED_AFTER`` labels,
        whether the service ranks them lowest is kept in ``ranking_at``."""
        row = {
            a.name: {
                "labels": self.given[a.name],
                "error_rate": a.error_rate,
                "reliability": reliabilities.get(a.name),
            }
            for a in self.annotators
        }
        noisiest = max(self.annotators, key=lambda a: a.error_rate)
        others = [a for a in self.annotators if a.error_rate < noisiest.error_rate]
        if self.ranking_at is None and others and self.given[noisiest.name] >= RANKED_AFTER:
            mine = reliabilities.get(noisiest.name)
            theirs = [reliabilities.get(a.name) for a in others]
            self.ranking_at = {
                "labels": labels,
                "annotator": noisiest.name,
                "annotator_labels": self.given[noisiest.name],
                "reliabilities": {a.name: reliabilities.get(a.name) for a in self.annotators},
                "lowest": mine is not None and all(t is not None and mine < t for t in theirs),
            }
        return row
