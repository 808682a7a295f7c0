"""Re-label or label new: suspect labels (training labels the consensus with the last
classifier's out-of-fold view holds wrong) compete with a strategy's new patches for places in the same batch.

One mechanism for every strategy (:meth:`~server.acquisition.base.Strategy.propose` applies
it): each new pick is worth its own score where the strategy's scores are probabilities or
margins (in [0, 1]), else its place in the strategy's order (1 for the first, falling
linearly); a re-label is worth its suspect score (P(the label is wrong)) times the best new
pick's worth, the acquisition's scale. Re-labels go in before the first new pick worth less
(the strategy's order among its own picks is kept: they may be chosen for diversity), at most
:data:`RELABEL_SHARE` of a batch; the new picks they displace drop off the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

RELABEL_SHARE = 0.2  # at most this share of a batch asks for a second look at a label
REASON = "relabel"


@dataclass(frozen=True)
class Suspect:
    """A suspect label offered for a second look: its position, exactly as labelled."""

    label_id: int
    x: int
    y: int
    z: int
    w: int
    h: int
    grid_index: int | None  # the grid patch the label box is, where it is one
    score: float  # P(the label is wrong), the consensus with the model
    p_artifact: float | None  # the classifier's own view of the patch


def pick_worths(picks: list[dict[str, Any]]) -> list[float]:
    """What each of a strategy's picks (best first) is worth on a common scale."""
    scores = [p.get("score") for p in picks]
    usable = [float(s) for s in scores if isinstance(s, int | float) and math.isfinite(s)]
    if len(usable) == len(scores) and usable and min(usable) >= 0 and 0 < max(usable) <= 1:
        return usable
    n = len(picks)
    return [1.0 - rank / n for rank in range(n)]


def mix_relabels(
    picks: list[dict[str, Any]],
    suspects: list[Suspect] | tuple[Suspect, ...],
    *,
    batch_size: int,
    share: float = RELABEL_SHARE,
) -> list[dict[str, Any]]:
    """``picks`` (new patches, best first) with the suspects worth more placed among them;
    at most ``batch_size`` in all, at most ``share`` of it re-labels."""
    cap = int(share * batch_size)
    if not suspects or cap <= 0:
        return picks
    worths = pick_worths(picks)
    scale = max(worths) if worths else 1.0
    ranked = sorted(suspects, key=lambda s: (-s.score, s.label_id))[:cap]
    relabels = [(s.score * scale, s) for s in ranked]
    out: list[dict[str, Any]] = []
    floor = math.inf  # the least worth among the new picks placed so far
    queue = list(relabels)
    for pick, worth in zip(picks, worths, strict=True):
        floor = min(floor, worth)
        while queue and queue[0][0] >= floor:
            out.append(_as_pick(*queue.pop(0)))
        out.append(pick)
    out += [_as_pick(*item) for item in queue]
    return out[:batch_size]


def _as_pick(worth: float, suspect: Suspect) -> dict[str, Any]:
    return {
        "index": suspect.grid_index,
        "reason": REASON,
        "score": worth,
        "p_artifact": suspect.p_artifact,
        "relabel": {
            "label_id": suspect.label_id,
            "x": suspect.x, "y": suspect.y, "z": suspect.z, "w": suspect.w, "h": suspect.h,
        },
    }  # fmt: skip
