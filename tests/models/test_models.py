"""models/ on tiny arrays: shapes, one training step, checkpoints, scoring, acquisition, metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models import acquisition as acq
from models.calibration import calibrated, fit_temperature, predict_logits
from models.checkpoint import load_checkpoint, save_checkpoint
from models.metrics import average_precision, classification_report, precision_at_recall, roc_auc
from models.networks import (
    DIHEDRAL,
    Autoencoder,
    Classifier,
    ClassifierConfig,
    Encoder,
    EncoderConfig,
    dihedral,
    for_inference,
)
from models.scoring import score_batch, score_stream, score_with_shortlist
from models.training import augment, balanced_order, pretrain_autoencoder, train_classifier

torch.set_num_threads(1)


def patches(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 140, 140)).astype(np.float32)


def test_shapes() -> None:
    x = torch.from_numpy(patches(3))
    ae = Autoencoder()
    assert ae(x).shape == x.shape
    assert ae.embed(x).shape == (3, 64)
    clf = Classifier(ClassifierConfig(n_types=4))
    logit, types = clf(x)
    assert logit.shape == (3,) and types is not None and types.shape == (3, 4)
    dense = clf.dense(torch.from_numpy(patches(1)[:, :, :, :]).repeat(1, 1, 2, 2), stride=35)
    assert dense.shape[:2] == (1, 1) and dense.shape[2] == dense.shape[3] >= 5


def test_fully_convolutional_encoder_equals_per_patch_encoder_at_patch_centres() -> None:
    """One pass over a tile gives every patch's centre features: at offsets that are a
    multiple of the encoder's total stride (16), the tile's deepest feature map, cropped, is
    the patch's own map wherever the receptive field stays inside the patch (its centre);
    only the border, which sees the patch's zero padding, differs."""
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig()).eval()
    for module in encoder.modules():  # non-trivial normalisation, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    tile = torch.randn(1, 1, 400, 400)
    with torch.no_grad():
        dense = encoder(tile)[-1]
        for top, left in [(0, 0), (16, 32), (128, 240), (256, 256)]:
            own = encoder(tile[:, :, top : top + 140, left : left + 140])[-1]
            assert own.shape[-2:] == (8, 8)
            crop = dense[:, :, top // 16 : top // 16 + 8, left // 16 : left // 16 + 8]
            centre = slice(2, 7)  # receptive field (73 px) inside the 140 px patch
            torch.testing.assert_close(
                crop[:, :, centre, centre], own[:, :, centre, centre], rtol=1e-5, atol=1e-5
            )


def test_one_training_step_of_each_network() -> None:
    x = patches(16)
    ae = pretrain_autoencoder(x, epochs=1, batch_size=8, device="cpu")
    assert np.isfinite(ae.val_loss) and len(ae.history) == 1
    y = np.array([0, 1] * 8, dtype=np.float32)
    before = {k: v.clone() for k, v in ae.model.encoder.state_dict().items()}
    result = train_classifier(x, y, autoencoder=ae.model, epochs=1, batch_size=8, device="cpu")
    assert result.history and 0.25 <= result.temperature <= 8
    assert result.tta == 8 and set(result.single_view) == {"temperature", "threshold"}
    assert 0.25 <= result.single_view["temperature"] <= 8
    changed = any(
        not torch.equal(before[k], v) for k, v in result.model.encoder.state_dict().items()
    )
    assert changed, "the encoder was fine-tuned, starting from the autoencoder"


def test_a_warm_start_begins_from_the_earlier_version() -> None:
    x = patches(16, seed=1)
    y = np.array([0, 1] * 8, dtype=np.float32)
    earlier = train_classifier(x, y, epochs=1, batch_size=8, tta=1, device="cpu").model
    types = np.array([0, 1, -1, 2] * 4, dtype=np.int64)  # a type head the earlier one lacked
    still = train_classifier(
        x, y, init=earlier, types=types, epochs=1, lr=0.0, batch_size=8, tta=1, device="cpu"
    ).model
    own = dict(still.named_parameters())
    for name, value in earlier.named_parameters():
        torch.testing.assert_close(own[name], value, msg=f"{name} came from the earlier version")
    assert still.head.types is not None and still.head.types.out_features == 3


def test_early_stopping_never_keeps_the_first_epochs() -> None:
    # labels that are noise: the validation loss is lowest at once, and patience 1 would stop
    # after two epochs; the first min_epochs are not candidates, so training runs past them
    x = patches(16, seed=3)
    y = np.array([0, 1] * 8, dtype=np.float32)
    result = train_classifier(
        x, y, epochs=12, patience=1, min_epochs=6, batch_size=8, tta=1, device="cpu"
    )
    assert len(result.history) >= 7


def test_calibrated_probabilities_keep_the_order_of_confident_logits() -> None:
    logits = np.array([9.0, 12.0, 15.0, -40.0], dtype=np.float32)  # float32 sigmoid: 1, 1, 1
    p = calibrated(logits, 0.5)
    assert p.dtype == np.float64 and p[3] < p[0] < p[1] < p[2] < 1.0
    np.testing.assert_allclose(calibrated(np.array([0.0, 2.0]), 2.0), [0.5, 1 / (1 + np.e**-1)])


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    clf = Classifier()
    sha = save_checkpoint(
        tmp_path / "c.pt",
        model=clf,
        norm=(148.0, 36.0),
        metrics={"f1": 0.5},
        extra={"temperature": 1.5},
    )
    assert len(sha) == 64
    loaded, meta = load_checkpoint(tmp_path / "c.pt")
    assert meta["architecture"] == "classifier" and meta["norm"] == {"mean": 148.0, "std": 36.0}
    assert meta["extra"]["temperature"] == 1.5
    x = torch.from_numpy(patches(2))
    clf.eval()
    assert torch.allclose(loaded(x)[0], clf(x)[0])


def test_scoring_streams_batches() -> None:
    ae, clf = Autoencoder().eval(), Classifier().eval()
    scores = score_stream(
        (patches(4, s) for s in range(3)),
        classifier=clf,
        autoencoder=ae,
        recon_reference={"median": 1.0, "mad": 0.1},
        mc_samples=4,
    )
    assert scores.p_artifact.shape == (12,) and scores.embedding.shape == (12, 64)
    assert np.all((scores.margin >= 0) & (scores.margin <= 1))
    assert np.all(np.isfinite(scores.bald)) and np.all(np.isfinite(scores.recon_error))


def test_audit_set_is_uniform_and_never_proposed() -> None:
    audit = acq.draw_audit_set(1000, 100, seed=1)
    assert audit.size == 100 and np.all(np.diff(audit) > 0)
    assert np.array_equal(audit, acq.draw_audit_set(1000, 100, seed=1))
    idx = np.arange(1000)
    rng = np.random.default_rng(0)
    p = rng.random(1000)
    emb = rng.standard_normal((1000, 8))
    for picks in (
        selector(
            acq.Candidates(idx, p_artifact=p, recon_error=rng.standard_normal(1000), embedding=emb),
            excluded=audit,
            batch_size=50,
            seed=0,
        )
        for selector in (
            acq.random_batch,
            acq.uncertainty_batch,
            acq.recon_batch,
            acq.hybrid_batch,
            acq.cold_start_batch,
        )
    ):
        chosen = {pk.index for pk in picks}
        assert len(chosen) == 50 and not chosen & set(audit.tolist())


def test_a_selector_names_the_scores_it_lacks() -> None:
    with pytest.raises(ValueError, match="p_artifact"):
        acq.hybrid_batch(
            acq.Candidates(np.arange(5), recon_error=np.zeros(5), embedding=np.zeros((5, 2))),
            excluded=np.empty(0, np.int64),
            batch_size=2,
            seed=0,
        )


def test_diversity_returns_no_near_duplicates() -> None:
    # 10 clusters of 20 near-identical, equally uncertain patches
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 16)) * 10
    emb = np.repeat(centres, 20, axis=0) + rng.standard_normal((200, 16)) * 0.01
    p = np.full(200, 0.5)
    picks = acq.hybrid_batch(
        acq.Candidates(np.arange(200), p_artifact=p, recon_error=np.zeros(200), embedding=emb),
        excluded=np.empty(0, np.int64),
        batch_size=10,
        seed=0,
        random_fraction=0.0,
    )
    clusters = {pk.index // 20 for pk in picks}
    assert len(clusters) == 10, "one pick per cluster, not ten copies of one"


def test_cold_start_returns_typical_and_anomalous() -> None:
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.standard_normal((300, 4)), rng.standard_normal((300, 4)) + 8])
    recon = rng.standard_normal(600)
    recon[[5, 400, 555]] = [50.0, 40.0, 30.0]  # three clear outliers
    picks = acq.cold_start_batch(
        acq.Candidates(np.arange(600), recon_error=recon, embedding=emb),
        excluded=np.empty(0, np.int64),
        batch_size=8,
        seed=0,
    )
    reasons = {pk.reason for pk in picks}
    assert reasons == {"typical", "anomalous"}
    assert {5, 400, 555} <= {pk.index for pk in picks if pk.reason == "anomalous"}
    typical = [pk.index for pk in picks if pk.reason == "typical"]
    assert any(i < 300 for i in typical) and any(i >= 300 for i in typical), "both clusters"


def test_metrics_against_hand_computed_values() -> None:
    y = np.array([1, 0, 1, 0, 0, 1])
    s = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    # ranked: 1 0 1 0 0 1 -> AP = (1/1 + 2/3 + 3/6) / 3
    assert average_precision(y, s) == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    # positive/negative pairs ranked right: 0.9>all 3 neg, 0.7>2, 0.1>0 -> 5 of 9
    assert roc_auc(y, s) == pytest.approx(5 / 9)
    assert precision_at_recall(y, s, 0.9) == pytest.approx(0.5)
    report = classification_report(y, s, threshold=0.5)
    assert report["confusion"] == [[2, 1], [1, 2]]
    assert report["precision"] == pytest.approx(2 / 3) and report["recall"] == pytest.approx(2 / 3)
    assert report["f1"] == pytest.approx(2 / 3) and report["accuracy"] == pytest.approx(4 / 6)


def test_temperature_scaling_softens_overconfident_logits() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.5
    logits = np.where(y, 1.0, -1.0) * 8 + rng.standard_normal(400) * 8  # overconfident
    assert fit_temperature(logits, y.astype(float)) > 1.5


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, as after training."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_inference_copy_gives_the_same_outputs() -> None:
    """Folding BatchNorm into the convs and channels-last memory change speed, not results."""
    x = torch.from_numpy(patches(4))
    clf = _trained_looking(Classifier())
    ae = _trained_looking(Autoencoder())
    fast_clf, fast_ae = for_inference(clf), for_inference(ae)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast_clf.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in clf.modules()), "original kept"
    assert for_inference(fast_clf) is fast_clf, "an inference copy is not copied again"
    with torch.no_grad():
        torch.testing.assert_close(fast_clf(x)[0], clf(x)[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast_ae(x), ae(x), rtol=1e-4, atol=1e-4)


def test_test_time_augmentation_over_all_eight_views_is_flip_invariant() -> None:
    """Averaged over the 8 flips/quarter turns, a patch and any flipped copy score alike;
    one view does not (the convolutions are not symmetric)."""
    x = patches(3, seed=4)
    clf = _trained_looking(Classifier())
    plain = predict_logits(clf, x, tta=8)
    one = predict_logits(clf, x, tta=1)
    for k, flip in DIHEDRAL[1:]:
        turned = dihedral(torch.from_numpy(x), k, flip).numpy()
        np.testing.assert_allclose(predict_logits(clf, turned, tta=8), plain, atol=1e-4)
    turned = dihedral(torch.from_numpy(x), 1, False).numpy()
    assert not np.allclose(predict_logits(clf, turned, tta=1), one, atol=1e-4)
    with pytest.raises(ValueError, match=r"1\.\.8"):
        predict_logits(clf, x, tta=9)


def test_only_the_shortlist_nearest_the_boundary_is_scored_with_all_views() -> None:
    x = patches(20, seed=5)
    clf = _trained_looking(Classifier()).eval()
    one = score_batch(x, classifier=clf, autoencoder=None, temperature=2.0)
    full = score_batch(x, classifier=clf, autoencoder=None, temperature=1.0, tta=8)
    got = score_with_shortlist(
        x, classifier=clf, tta=8, shortlist=0.2, temperature=1.0, single_view_temperature=2.0
    )
    near = set(np.argsort(-one.margin)[:4].tolist())  # 20% of 20, nearest p = 0.5 in one view
    for i in range(20):
        expected = full if i in near else one
        np.testing.assert_allclose(got.p_artifact[i], expected.p_artifact[i], atol=1e-5)
        np.testing.assert_allclose(got.margin[i], expected.margin[i], atol=1e-5)
    every = score_with_shortlist(x, classifier=clf, tta=8, shortlist=1.0, temperature=1.0)
    np.testing.assert_allclose(every.p_artifact, full.p_artifact, atol=1e-5)


def test_augmentation_turns_each_patch_its_own_way() -> None:
    """Every output is one of the 8 flips/quarter turns of its input (up to the brightness
    and contrast jitter), and a batch mixes several of them."""
    base = torch.from_numpy(patches(1, seed=5)).repeat(32, 1, 1, 1)
    out = augment(base, torch.Generator().manual_seed(0))
    views = torch.stack([dihedral(base[0], k, flip) for k, flip in DIHEDRAL])  # (8, 1, h, w)
    seen = set()
    for o in out:
        corr = [float(np.corrcoef(o.flatten(), v.flatten())[0, 1]) for v in views]
        best = int(np.argmax(corr))
        assert corr[best] > 0.999
        seen.add(best)
    assert len(seen) >= 4


def test_balanced_order_draws_half_positives() -> None:
    y = np.array([1] * 5 + [0] * 95, dtype=np.float32)
    train = np.arange(100)
    order = balanced_order(y, train, torch.Generator().manual_seed(0))
    assert len(order) == 100 and y[order].sum() == 50
    assert set(order[y[order] == 0]).__len__() == 50, "negatives without replacement"
    only_neg = balanced_order(np.zeros(10, np.float32), np.arange(10), torch.Generator())
    assert sorted(only_neg.tolist()) == list(range(10))


def test_sample_weights_scale_each_patch_and_all_ones_train_as_none() -> None:
    x = patches(16, seed=4)
    y = np.array([0, 1] * 8, dtype=np.float32)
    kw: dict[str, Any] = {"epochs": 2, "min_epochs": 1, "batch_size": 8, "tta": 1, "device": "cpu"}
    plain = train_classifier(x, y, **kw)
    ones = train_classifier(x, y, sample_weights=np.ones(16, dtype=np.float32), **kw)
    assert ones.history == plain.history, "weight 1 everywhere is the unweighted training"
    halves = train_classifier(x, y, sample_weights=np.full(16, 0.5, dtype=np.float32), **kw)
    first = halves.history[0]
    assert first["train_loss"] == pytest.approx(plain.history[0]["train_loss"] / 2, rel=1e-2)
    for bad in (np.ones(15), np.array([-1.0] + [1.0] * 15), np.array([np.nan] + [1.0] * 15)):
        with pytest.raises(ValueError, match="sample_weights"):
            train_classifier(x, y, sample_weights=bad, **kw)
