"""The one registry of acquisition strategies. Settings, job parameters, the CLI, ``simulate``,
the benchmarks and the docs table take their names from here.

Add a strategy: write its module beside this one (a :class:`~server.acquisition.base.Strategy`
subclass: ``name``, ``summary``, ``choose``; ``needs_scores`` and ``scoring`` when it ranks by
the classifier's scores) and add one row to :data:`REGISTRY`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

from server.acquisition.base import Strategy
from server.acquisition.hybrid import Hybrid
from server.acquisition.random_sampling import RandomSampling
from server.acquisition.recon import Recon
from server.acquisition.uncertainty import Uncertainty
from server.errors import InvalidInput

REGISTRY: dict[str, Strategy] = {
    s.name: s
    for s in (
        RandomSampling(),
        Uncertainty(),
        Recon(),
        Hybrid(),
    )
}
DEFAULT = "hybrid"
RANDOM = "random"  # the baseline every strategy must beat


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> Strategy:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InvalidInput(
            f"unknown acquisition strategy {name!r}; choose one of {', '.join(names())}"
        ) from None


def _known(name: str) -> str:
    if name not in REGISTRY:  # asked at validation time: a strategy added later counts
        raise ValueError(
            f"unknown acquisition strategy {name!r}; choose one of {', '.join(names())}"
        )
    return name


# a strategy's name in settings and job parameters
StrategyName = Annotated[
    str, AfterValidator(_known), WithJsonSchema({"type": "string", "enum": list(REGISTRY)})
]


def docs_table() -> str:
    """The README's table of strategies, from the registry."""
    rows = [
        "| strategy | how it chooses | needs classifier scores (candidates scored) "
        "| before the first classifier |",
        "|---|---|---|---|",
    ]
    for s in REGISTRY.values():
        scores = f"yes ({_scored(s)})" if s.needs_scores else "no"
        rows.append(f"| `{s.name}` | {s.summary} | {scores} | {s.cold_start_summary} |")
    return "\n".join(rows) + "\n"


def _scored(strategy: Strategy) -> str:
    policy = strategy.scoring
    shares = [
        f"{share:.0%} {what}"
        for what, share in (
            ("the last round's most uncertain", policy.previous_uncertain),
            ("the most anomalous", policy.anomalous),
            ("neighbours of labelled artifacts", policy.neighbours),
        )
        if share
    ]
    return ", ".join([*shares, "the rest at random" if shares else "at random"])
