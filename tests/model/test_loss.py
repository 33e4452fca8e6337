import math

import pytest
import torch
from torch.nn import functional as F

from model import regularizers as reg
from model.config import ModelConfig
from model.factory import build_model
from model.loss import (
    LossWeights,
    correspondence_loss,
    disentanglement_loss,
    info_nce,
    mix_separate_loss,
    regularizer_terms,
)
from model.similarity import batch_scores, pair_volume

SR = 16_000


def _feats(b=4, c=6, k=2, t=8, h=3, w=3, seed=0, with_mix=True):
    gen = torch.Generator().manual_seed(seed)
    feats = {}
    kinds = ("sound", "speech", "mix") if with_mix else ("sound", "speech")
    for kind in kinds:
        feats[f"{kind}_audio"] = torch.randn(b, c, k, 1, t, generator=gen, dtype=torch.float64)
        feats[f"{kind}_mask"] = torch.ones(b, t, dtype=torch.bool)
    for kind in ("sound", "speech"):
        feats[f"{kind}_image"] = torch.randn(b, c, k, h, w, generator=gen, dtype=torch.float64)
    feats["speech_mask"][:, t // 2 :] = False
    return feats


# --------------------------------------------------------------------------------------- InfoNCE


def test_info_nce_is_the_mean_of_both_directions():
    scores = torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = torch.tensor(3.0, dtype=torch.float64)
    logits = w * scores
    manual = 0.0
    for i in range(5):
        manual -= 0.5 * (torch.log_softmax(logits[i], 0)[i] + torch.log_softmax(logits[:, i], 0)[i]) / 5
    torch.testing.assert_close(info_nce(scores, w), manual)
    torch.testing.assert_close(info_nce(scores.t(), w), info_nce(scores, w))
    assert info_nce(torch.eye(4) * 10, torch.tensor(100.0)) < 1e-6
    with pytest.raises(ValueError, match="square"):
        info_nce(torch.zeros(3, 4), w)


# ---------------------------------------------------------------------------------------- objective


def test_objective_terms_follow_eqs_7_and_9():
    feats = _feats()
    w = torch.tensor(2.0, dtype=torch.float64)
    no_regs = LossWeights(regularizers=reg.RegularizerWeights(0, 0, 0, 0, 0, 0, 0))
    total, terms = mix_separate_loss(feats, w, no_regs, sound_head=1, speech_head=0)
    cor_sound = info_nce(batch_scores(feats["sound_audio"], feats["sound_mask"], feats["sound_image"]), w)
    dis_sound = info_nce(batch_scores(feats["mix_audio"], feats["mix_mask"], feats["sound_image"], head=1), w)
    dis_speech = info_nce(batch_scores(feats["mix_audio"], feats["mix_mask"], feats["speech_image"], head=0), w)
    torch.testing.assert_close(terms["cor/sound"], cor_sound)
    torch.testing.assert_close(terms["dis"], dis_sound + dis_speech)
    torch.testing.assert_close(total, terms["cor"] + terms["dis"])
    assert set(terms) == {"cor/sound", "cor/speech", "cor", "dis/sound", "dis/speech", "dis", "total"}
    assert not any(t.requires_grad for t in terms.values())


def test_eq11_is_the_sum_of_the_named_terms():
    """mix_separate_loss adds what correspondence_loss (Eq. 7), disentanglement_loss (Eq. 9) and
    regularizer_terms return, each with its weight."""
    feats = _feats(seed=4)
    w = torch.tensor(1.5, dtype=torch.float64)
    weights = LossWeights(correspondence=0.5, disentanglement=2.0)
    total, terms = mix_separate_loss(
        feats, w, weights, sound_head=1, speech_head=0, generator=torch.Generator().manual_seed(0)
    )
    cor = correspondence_loss(feats, w)
    dis = disentanglement_loss(feats, w, sound_head=1, speech_head=0)
    regs = regularizer_terms(feats, w, weights.regularizers, generator=torch.Generator().manual_seed(0))
    assert set(cor) == set(dis) == {"sound", "speech"}
    torch.testing.assert_close(terms["cor"], cor["sound"] + cor["speech"])
    torch.testing.assert_close(terms["dis/speech"], dis["speech"])
    expected = (
        0.5 * (cor["sound"] + cor["speech"])
        + 2.0 * (dis["sound"] + dis["speech"])
        + sum(getattr(weights.regularizers, name) * value for name, value in regs.items())
    )
    torch.testing.assert_close(total.detach(), expected.detach())
    assert {f"reg/{name}" for name in regs} == {t for t in terms if t.startswith("reg/")}


def test_disentanglement_uses_each_head_for_its_own_images_only():
    feats = _feats(seed=2)
    w = torch.tensor(1.0, dtype=torch.float64)
    _, before = mix_separate_loss(feats, w)
    changed = dict(feats)
    changed["mix_audio"] = feats["mix_audio"].clone()
    changed["mix_audio"][:, :, 1] = torch.randn_like(changed["mix_audio"][:, :, 1])  # speech head of the mixture
    _, after = mix_separate_loss(changed, w)
    torch.testing.assert_close(after["dis/sound"], before["dis/sound"])
    assert not torch.isclose(after["dis/speech"], before["dis/speech"])


def test_correspondence_with_own_heads_scores_each_type_with_its_head():
    """The ``correspondence_heads: own`` diagnostic: s_N of the type's own head instead of s_M."""
    feats = _feats(seed=5)
    w = torch.tensor(1.0, dtype=torch.float64)
    weights = LossWeights(
        disentanglement=0.0, correspondence_heads="own", regularizers=reg.RegularizerWeights(0, 0, 0, 0, 0, 0, 0)
    )
    _, terms = mix_separate_loss(feats, w, weights, sound_head=1, speech_head=0)
    own_sound = info_nce(batch_scores(feats["sound_audio"], feats["sound_mask"], feats["sound_image"], head=1), w)
    own_speech = info_nce(batch_scores(feats["speech_audio"], feats["speech_mask"], feats["speech_image"], head=0), w)
    torch.testing.assert_close(terms["cor/sound"], own_sound)
    torch.testing.assert_close(terms["cor/speech"], own_speech)
    _, paper = mix_separate_loss(feats, w, LossWeights(disentanglement=0.0), sound_head=1, speech_head=0)
    assert not torch.isclose(paper["cor/sound"], terms["cor/sound"])
    with pytest.raises(ValueError, match="correspondence_heads must be max or own"):
        LossWeights(correspondence_heads="sum")


def test_warmup_weights_skip_the_mixture():
    feats = _feats(with_mix=False)
    total, terms = mix_separate_loss(feats, torch.tensor(1.0, dtype=torch.float64), LossWeights(disentanglement=0.0))
    assert "dis" not in terms and "cor" in terms and torch.isfinite(total)
    with pytest.raises(KeyError, match="mix_audio"):
        mix_separate_loss(feats, torch.tensor(1.0, dtype=torch.float64))


def test_every_regularizer_is_reported_and_weighted():
    feats = _feats(seed=3)
    feats["sound_splice"] = torch.zeros(4, 8, dtype=torch.bool)
    feats["sound_splice"][:, 2:5] = True
    feats["speech_image_foreign"] = torch.zeros(4, 3, 3, dtype=torch.float64)
    feats["speech_image_foreign"][0, :, 1:] = 1.0
    w = torch.tensor(0.5, dtype=torch.float64)
    weights = LossWeights()
    total, terms = mix_separate_loss(feats, w, weights, generator=torch.Generator().manual_seed(0))
    names = {"nonneg", "silence", "splice", "tv", "temperature", "specialization", "mixup"}
    assert {f"reg/{n}" for n in names} <= set(terms)
    rw = weights.regularizers
    expected = terms["cor"] + terms["dis"] + sum(getattr(rw, n) * terms[f"reg/{n}"] for n in names)
    torch.testing.assert_close(total.detach(), expected)
    assert terms["reg/temperature"] == pytest.approx(math.log(2) ** 2)
    # splice and mixup each come from one pair set here; the others average the two
    vol = pair_volume(feats["sound_audio"], feats["sound_image"], feats["sound_mask"])
    torch.testing.assert_close(terms["reg/splice"], reg.splice(vol, feats["sound_mask"], feats["sound_splice"]))


# ------------------------------------------------------------------------------------- regularizers


def test_nonnegativity_is_zero_for_nonnegative_features_and_positive_otherwise():
    feats = _feats(seed=4)
    a, v = feats["sound_audio"].abs(), feats["sound_image"].abs()
    assert reg.nonnegativity(a, v, torch.Generator().manual_seed(0)) == 0
    assert reg.nonnegativity(a, -v, torch.Generator().manual_seed(0)) > 0


def test_silence_matches_a_direct_computation():
    feats = _feats(seed=5)
    a, mask, v = feats["speech_audio"], feats["speech_mask"], feats["speech_image"]
    assert reg.silence(a, torch.ones_like(mask), v) == 0
    item, frame = (~mask).nonzero(as_tuple=True)
    audio = a[item, :, :, 0, frame]  # [n, C, K]
    expected = torch.einsum("nck,bckhw->bknhw", audio, v).abs().mean()
    torch.testing.assert_close(reg.silence(a, mask, v, samples=10_000), expected)


def test_splice_tv_specialization_and_mixup():
    feats = _feats(seed=6)
    a, mask, v = feats["sound_audio"], feats["sound_mask"], feats["sound_image"]
    vol = pair_volume(a, v, mask)
    none = torch.zeros_like(mask)
    assert reg.splice(vol, mask, none) == 0
    spliced = none.clone()
    spliced[:, 3] = True
    torch.testing.assert_close(reg.splice(vol, mask, spliced), vol[:, :, :, 3].square().mean())

    constant = a[..., :1].expand_as(a)  # the same vector at every frame
    assert reg.temporal_smoothness(pair_volume(constant, v, mask), mask) == 0
    assert reg.temporal_smoothness(vol, mask) > 0

    one_head = a.clone()
    one_head[:, :, 1] = 0
    assert reg.head_specialization(pair_volume(one_head, v, mask), mask) == 0
    expected = (vol[:, 0].abs() * vol[:, 1].abs()).mean()
    torch.testing.assert_close(reg.head_specialization(vol, mask), expected)

    foreign = torch.zeros(4, 3, 3, dtype=torch.float64)
    assert reg.image_mixup(vol, mask, foreign) == 0
    foreign[1, 2, :] = 1.0
    torch.testing.assert_close(reg.image_mixup(vol, mask, foreign), vol[1, :, :, :, 2, :].square().mean())


def test_temperature_floor():
    assert reg.temperature_floor(torch.tensor(1.0)) == 0
    assert reg.temperature_floor(torch.tensor(5.0)) == 0
    assert reg.temperature_floor(torch.tensor(math.exp(-1.0))).item() == pytest.approx(1.0)


def test_mosaic_quadrants_and_mask():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(5, 3, 16, 20, generator=gen)
    same, foreign = reg.make_mosaic(images, torch.Generator().manual_seed(1), p=0.0)
    assert same is images and not foreign.any()

    out, foreign = reg.make_mosaic(images, torch.Generator().manual_seed(1), p=1.0)
    again, foreign2 = reg.make_mosaic(images, torch.Generator().manual_seed(1), p=1.0)
    assert torch.equal(out, again) and torch.equal(foreign, foreign2)
    assert foreign.shape == (5, 16, 20)
    for i in range(5):
        own = ~foreign[i]
        assert own.sum() == 8 * 10  # exactly one quadrant is the image itself
        rows, cols = own.nonzero(as_tuple=True)
        r0, c0 = int(rows.min()), int(cols.min())
        small = F.interpolate(images[i : i + 1], size=(8, 10), mode="bilinear", align_corners=False, antialias=True)[0]
        torch.testing.assert_close(out[i, :, r0 : r0 + 8, c0 : c0 + 10], small)


# ------------------------------------------------------------------------------------------ overfit


def _fixed_batch(b=4, seconds=0.6, size=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    batch = {}
    for kind in ("sound", "speech"):
        batch[f"{kind}_audio"] = 0.1 * torch.randn(b, n, generator=gen)
        batch[f"{kind}_mask"] = torch.ones(b, n, dtype=torch.bool)
        batch[f"{kind}_image"] = torch.randn(b, 3, size, size, generator=gen)
    batch["speech_mask"][:, int(0.7 * n) :] = False
    batch["speech_audio"] *= batch["speech_mask"]
    batch["mix_audio"] = batch["sound_audio"] + batch["speech_audio"]
    batch["mix_mask"] = batch["sound_mask"] | batch["speech_mask"]
    return batch


def test_tiny_model_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny")).set_stage("full")
    model.train()
    batch = _fixed_batch()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for step in range(15):
        total, terms = mix_separate_loss(
            model(batch), model.logit_scale(), generator=torch.Generator().manual_seed(step)
        )
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(terms)
    first, last = history[0], history[-1]
    assert last["total"] < 0.3 * first["total"]
    assert last["cor"] < 0.2 * first["cor"] and last["dis"] < 0.2 * first["dis"]
