"""Re-label or label new: suspect labels compete with every strategy's new patches in the same
batch through one mechanism, worth their suspect score times the acquisition's scale, capped."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from server.acquisition import registry
from server.acquisition.candidates import Pool
from server.acquisition.relabel import RELABEL_SHARE, Suspect, mix_relabels, pick_worths


class _Features:
    """An autoencoder's features of a small grid, in memory."""

    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(0)
        self.recon = rng.normal(size=n).astype(np.float32)
        self.embed = rng.normal(size=(n, 8)).astype(np.float16)

    def complete(self) -> bool:
        return True

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.recon[indices], self.embed[indices]

    def stream(self, *, embedding: bool = True) -> Iterator[tuple[np.ndarray, ...]]:
        yield np.arange(len(self.recon)), self.recon, self.embed


def _suspect(label_id: int, score: float, grid_index: int | None = None) -> Suspect:
    return Suspect(
        label_id=label_id, x=140 * label_id, y=0, z=0, w=140, h=140, grid_index=grid_index,
        score=score, p_artifact=0.9,
    )  # fmt: skip


def _pool(n: int = 200, relabels: tuple[Suspect, ...] = ()) -> Pool:
    rng = np.random.default_rng(1)
    idx = np.arange(n)
    p = rng.random(n).astype(np.float32)
    scores = {"index": idx, "p_artifact": p, "uncertainty": 1 - np.abs(2 * p - 1)}
    return Pool(
        n_patches=n, excluded=np.arange(5), features=_Features(n), scores=scores,
        relabels=relabels,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(registry.names()))
@pytest.mark.parametrize("classifier", [True, False])
def test_every_strategy_offers_confident_suspects_in_the_same_batch_capped(
    name: str, classifier: bool
) -> None:
    strategy = registry.get(name)
    suspects = tuple(_suspect(i, 0.99 - i * 0.001, grid_index=i) for i in range(10))
    plain = strategy.propose(_pool(), batch_size=20, seed=3, classifier=classifier)
    mixed = strategy.propose(_pool(relabels=suspects), batch_size=20, seed=3, classifier=classifier)
    relabels = [p for p in mixed if p["reason"] == "relabel"]
    assert len(mixed) == 20
    assert 1 <= len(relabels) <= int(RELABEL_SHARE * 20)
    # the strongest suspects, and new picks keep the strategy's own order
    assert [p["relabel"]["label_id"] for p in relabels] == list(range(len(relabels)))
    new = [p for p in mixed if p["reason"] != "relabel"]
    assert [p["index"] for p in new] == [p["index"] for p in plain][: len(new)]
    assert all(p["relabel"]["w"] == 140 for p in relabels)


def test_a_weak_suspect_loses_to_more_valuable_new_patches() -> None:
    picks = [{"index": i, "reason": "uncertain", "score": s} for i, s in enumerate([0.9, 0.8, 0.3])]
    mixed = mix_relabels(picks, [_suspect(7, 0.5)], batch_size=3, share=0.5)
    assert [p["reason"] for p in mixed] == ["uncertain", "uncertain", "relabel"]
    assert mixed[2]["score"] == pytest.approx(0.5 * 0.9)  # its worth: score x the best pick's


def test_no_suspects_or_a_batch_too_small_for_the_cap_change_nothing() -> None:
    picks = [{"index": i, "reason": "random", "score": 0.0} for i in range(4)]
    assert mix_relabels(picks, [], batch_size=4) == picks
    assert mix_relabels(picks, [_suspect(1, 1.0)], batch_size=4) == picks  # 20% of 4 is 0


def test_scores_not_on_a_zero_to_one_scale_are_ranked_by_place() -> None:
    assert pick_worths([{"score": -3.0}, {"score": -5.0}]) == [1.0, 0.5]
    assert pick_worths([{"score": 0.0}, {"score": 0.0}]) == [1.0, 0.5]
    assert pick_worths([{"score": 0.7}, {"score": 0.2}]) == [0.7, 0.2]
