"""Heads named by audio type (``ModelConfig.head_types``) and the objective for K >= 2 typed
streams: Eq. 7 over every type, Eq. 9 over the types in the mixture."""

import json

import pytest
import torch

from model.config import ModelConfig
from model.factory import build_model
from model.loss import LossWeights, disentanglement_loss, info_nce, mix_separate_loss
from model.regularizers import RegularizerWeights
from model.similarity import batch_scores

SR = 16_000
NO_REGS = RegularizerWeights(0, 0, 0, 0, 0, 0, 0)


# ------------------------------------------------------------------------------------------- config


def test_head_types_derive_from_the_two_head_fields_and_back():
    two = ModelConfig.preset("tiny")
    assert (two.head_types, two.num_heads, two.sound_head, two.speech_head) == (["sound", "speech"], 2, 0, 1)
    assert ModelConfig.preset("tiny", sound_head=1, speech_head=0).head_types == ["speech", "sound"]
    three = ModelConfig.preset("tiny", head_types=["speech", "sound", "music"])
    assert (three.num_heads, three.sound_head, three.speech_head, three.head_of("music")) == (3, 1, 0, 2)
    no_sound = ModelConfig.preset("tiny", head_types=["music", "speech"])
    assert (no_sound.sound_head, no_sound.speech_head) == (None, 1)
    for cfg in (two, three, no_sound):
        assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="no head answers the audio type 'music'"):
        two.head_of("music")


def test_a_model_config_written_before_head_types_loads_with_the_same_heads():
    written = json.loads(ModelConfig.preset("tiny", sound_head=1, speech_head=0).to_json())
    del written["head_types"]  # what model_config.json held before
    old = ModelConfig.from_dict(written)
    assert (old.head_types, old.sound_head, old.speech_head) == (["speech", "sound"], 1, 0)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(head_types=["sound", "speech", "music"], num_heads=2), "num_heads=2 but head_types"),
        (dict(head_types=["sound", "sound"]), r"names \['sound'\] more than once"),
        (dict(head_types=["Music", "speech"]), "'Music' is not an audio type name"),
        (dict(head_types=["mix", "speech"]), "'mix' is not an audio type name"),
        (dict(head_types=["speech", "sound"], sound_head=0), "sound_head=0 but head_types"),
        (dict(head_types=["music", "speech"], sound_head=0), "puts 'sound' on no head"),
        (dict(head_types=[]), "at least one head"),
    ],
)
def test_head_types_that_disagree_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.preset("tiny", **fields)


def test_naming_a_speech_head_swaps_the_type_names():
    cfg = ModelConfig.preset("tiny", head_types=["sound", "speech", "music"])
    cfg.name_head("speech", 2)
    assert (cfg.head_types, cfg.speech_head, cfg.sound_head) == (["sound", "music", "speech"], 2, 0)


# --------------------------------------------------------------------------------------- K = 3


def _typed_batch(types, b=3, seconds=0.6, size=64, seed=0):
    """A batch of the typed-streams contract: every type's stem, image and mask, the mixture of them."""
    gen = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    batch = {"types": tuple(types), "mix_types": tuple(types)}
    for kind in types:
        batch[f"{kind}_audio"] = 0.1 * torch.randn(b, n, generator=gen)
        batch[f"{kind}_mask"] = torch.ones(b, n, dtype=torch.bool)
        batch[f"{kind}_image"] = torch.randn(b, 3, size, size, generator=gen)
    batch["mix_audio"] = sum(batch[f"{kind}_audio"] for kind in types)
    batch["mix_mask"] = torch.ones(b, n, dtype=torch.bool)
    return batch


@pytest.fixture(scope="module")
def three_heads():
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny", image_size=64, head_types=["speech", "sound", "music"]))
    return model.set_stage("full").train()


def test_k3_forward_and_objective_cover_every_type(three_heads):
    model = three_heads
    batch = _typed_batch(["speech", "sound", "music"])
    feats = model(batch)
    for kind in ("speech", "sound", "music", "mix"):
        assert feats[f"{kind}_audio"].shape[:3] == (3, 32, 3) and feats[f"{kind}_mask"].shape[0] == 3
    assert {k for k in feats if k.endswith("_image")} == {"speech_image", "sound_image", "music_image"}
    w = model.logit_scale()
    total, terms = mix_separate_loss(
        feats, w, LossWeights(regularizers=NO_REGS), head_types=model.config.head_types, types=batch["types"]
    )
    assert set(terms) == {f"{p}/{t}" for p in ("cor", "dis") for t in ("music", "sound", "speech")} | {
        "cor",
        "dis",
        "total",
    }
    # Eq. 9 for K types: the mixture's head h(music) = 2 against the music images
    music = info_nce(batch_scores(feats["mix_audio"], feats["mix_mask"], feats["music_image"], head=2), w)
    torch.testing.assert_close(terms["dis/music"], music.detach())
    cor_music = info_nce(batch_scores(feats["music_audio"], feats["music_mask"], feats["music_image"]), w)
    torch.testing.assert_close(terms["cor/music"], cor_music.detach())
    torch.testing.assert_close(terms["dis"], terms["dis/music"] + terms["dis/sound"] + terms["dis/speech"])
    torch.testing.assert_close(total.detach(), terms["cor"] + terms["dis"])


def test_the_music_term_of_l_dis_trains_the_third_head_alone(three_heads):
    """The image aligner's 1x1 projection writes each head's channels with its own rows (head-major),
    so dis/music reaches head 2's rows and no other head's."""
    model = three_heads
    model.zero_grad(set_to_none=True)
    feats = model(_typed_batch(["speech", "sound", "music"], seed=1))
    dis = disentanglement_loss(feats, model.logit_scale(), head_types=model.config.head_types, mix_types=["music"])
    assert set(dis) == {"music"}
    dis["music"].backward()
    grad = model.image_aligner.proj.weight.grad.reshape(3, model.config.code_dim, -1)  # [K, C, in]
    assert grad[2].abs().sum() > 0
    assert grad[0].abs().sum() == 0 and grad[1].abs().sum() == 0
    assert model.audio_encoder.backbone.encoder.layers[0].attention.q_proj.weight.grad.abs().sum() > 0


def _features(types, b=5, seed=3):
    gen = torch.Generator().manual_seed(seed)
    feats = {}
    for kind in (*types, "mix"):
        feats[f"{kind}_audio"] = torch.randn(b, 4, len(types), 1, 6, generator=gen, dtype=torch.float64)
        feats[f"{kind}_mask"] = torch.ones(b, 6, dtype=torch.bool)
    for kind in types:
        feats[f"{kind}_image"] = torch.randn(b, 4, len(types), 2, 2, generator=gen, dtype=torch.float64)
    return feats


def test_l_dis_of_a_pair_mixture_has_that_pair_only():
    types = ("speech", "sound", "music")
    feats, w = _features(types), torch.tensor(1.3, dtype=torch.float64)
    heads = ["sound", "music", "speech"]
    _, terms = mix_separate_loss(
        feats, w, LossWeights(regularizers=NO_REGS), head_types=heads, types=types, mix_types=("speech", "music")
    )
    assert {t for t in terms if t.startswith("dis/")} == {"dis/music", "dis/speech"}
    assert {t for t in terms if t.startswith("cor/")} == {"cor/music", "cor/sound", "cor/speech"}
    speech = info_nce(batch_scores(feats["mix_audio"], feats["mix_mask"], feats["speech_image"], head=2), w)
    torch.testing.assert_close(terms["dis/speech"], speech)
    torch.testing.assert_close(terms["dis"], terms["dis/music"] + terms["dis/speech"])


def test_l_dis_over_the_rows_whose_mixture_holds_the_type():
    """A gathered batch whose processes mixed different types: each term over its own items."""
    types = ("sound", "speech", "music")
    feats, w = _features(types), torch.tensor(0.7, dtype=torch.float64)
    rows = {"music": torch.tensor([0, 2, 3]), "speech": torch.tensor([4])}
    dis = disentanglement_loss(feats, w, head_types=list(types), mix_types=types, mix_rows=rows)
    assert set(dis) == {"sound", "music"}  # one speech item: no negative, no term
    sub = {k: feats[k][rows["music"]] for k in ("mix_audio", "mix_mask", "music_image")}
    expected = info_nce(batch_scores(sub["mix_audio"], sub["mix_mask"], sub["music_image"], head=2), w)
    torch.testing.assert_close(dis["music"], expected)


def test_the_objective_does_not_depend_on_the_order_types_are_listed(three_heads):
    model = three_heads
    weights = LossWeights()
    results = []
    for order in (("speech", "sound", "music"), ("music", "speech", "sound")):
        batch = _typed_batch(("speech", "sound", "music"), seed=2)
        batch["types"] = batch["mix_types"] = order
        with torch.no_grad():
            feats = model(batch)
            _, terms = mix_separate_loss(
                feats,
                model.logit_scale(),
                weights,
                head_types=model.config.head_types,
                types=order,
                generator=torch.Generator().manual_seed(0),
            )
        results.append(terms)
    assert results[0].keys() == results[1].keys()
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
