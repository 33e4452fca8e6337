"""The speed options of ModelConfig compute the reference function: the same loss and gradients
(float32, tiny backbones from transformers configs) as eager attention, no checkpointing, no
compile, transformers' conv front end."""

import pytest
import torch
from torch._dynamo.utils import counters

from bench.train_step import make_batch
from model.config import TINY_HUBERT, TINY_VIT, ModelConfig
from model.factory import build_model, compile_encoders
from model.loss import LossWeights, mix_separate_loss

CLIP = 16_000  # 1 s


def _reference_state():
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny", attn_implementation="eager"))
    with torch.no_grad():  # LoRA B starts at zero, which would leave LoRA A without gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.01)
    return model.state_dict()


@pytest.fixture(scope="module")
def state():
    return _reference_state()


@pytest.fixture(scope="module")
def batch():
    # three items; make_batch pads the first one (70% valid), so the padding mask is exercised
    return make_batch(3, 112, CLIP, seed=1)


def _model(state, **options):
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny", **options))
    model.load_state_dict(state)
    return model.set_stage("full").train()


def _loss_and_grads(model, batch):
    feats = model(batch)
    total, _ = mix_separate_loss(
        feats,
        model.logit_scale(),
        LossWeights(),
        sound_head=0,
        speech_head=1,
        generator=torch.Generator().manual_seed(0),
    )
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_step(ref, other, skip=()):
    (loss_a, grads_a), (loss_b, grads_b) = ref, other
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    expected = {n for n in grads_a if not n.startswith(skip)} if skip else set(grads_a)
    assert set(grads_b) == expected
    assert any("lora_A" in n for n in expected) and any("feature_extractor" in n for n in grads_a)
    for name in expected:  # float32 sums in another order: tolerance relative to the gradient's scale
        scale = float(grads_a[name].abs().max())
        torch.testing.assert_close(
            grads_b[name], grads_a[name], rtol=1e-4, atol=1e-4 * scale + 1e-8, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.fixture(scope="module")
def reference(state, batch):
    return _loss_and_grads(_model(state, attn_implementation="eager"), batch)


def test_sdpa_masks_the_padded_frames_as_eager_does(state, batch, reference):
    eager, sdpa = _model(state, attn_implementation="eager"), _model(state, attn_implementation="sdpa")
    assert sdpa.audio_encoder.backbone.config._attn_implementation == "sdpa"
    assert sdpa.image_encoder.backbone.config._attn_implementation == "sdpa"
    wave, mask = batch["sound_audio"], batch["sound_mask"]
    assert not bool(mask[0].all()) and bool(mask[-1].all())  # one shorter clip
    with torch.no_grad():
        hidden = [m.audio_encoder(wave, mask).squeeze(2) for m in (eager, sdpa)]  # [B, D, T]
    valid = eager.audio_encoder.backbone._get_feature_vector_attention_mask(hidden[0].shape[-1], mask.long())
    assert 0 < int(valid[0].sum()) < valid.shape[1]
    torch.testing.assert_close(hidden[1].transpose(1, 2)[valid], hidden[0].transpose(1, 2)[valid], rtol=1e-4, atol=1e-5)
    _assert_same_step(reference, _loss_and_grads(sdpa, batch))


def _saved_bytes(model, batch):
    """Bytes of the tensors autograd keeps for backward during one forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        feats = model(batch)
    del feats
    return total


@pytest.mark.parametrize("choice", ["front_end", "audio", "all"])
def test_checkpointing_keeps_less_and_gives_the_same_gradients(state, batch, reference, choice):
    model = _model(state, attn_implementation="eager", gradient_checkpointing=choice)
    baseline = _saved_bytes(_model(state, attn_implementation="eager"), batch)
    assert _saved_bytes(model, batch) < baseline
    _assert_same_step(reference, _loss_and_grads(model, batch))


def test_checkpointing_choices_are_ordered_by_what_they_keep(state, batch):
    kept = [_saved_bytes(_model(state, gradient_checkpointing=c), batch) for c in ("off", "front_end", "audio", "all")]
    assert kept == sorted(kept, reverse=True) and len(set(kept)) == 4, kept


def test_channels_last_front_end_with_checkpointing_and_sdpa(state, batch, reference):
    plain = _saved_bytes(_model(state, audio_channels_last=True), batch)
    model = _model(state, audio_channels_last=True, gradient_checkpointing="front_end")
    assert type(model.audio_encoder.backbone.feature_extractor).__name__ == "ChannelsLastFeatureEncoder"
    assert _saved_bytes(model, batch) < plain
    _assert_same_step(reference, _loss_and_grads(model, batch))


def test_frozen_feature_encoder_gets_no_gradient_and_leaves_the_rest_unchanged(state, batch, reference):
    model = _model(state, attn_implementation="eager", freeze_feature_encoder=True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and not any(".feature_extractor." in n for n in names)
    _assert_same_step(reference, _loss_and_grads(model, batch), skip="audio_encoder.backbone.feature_extractor.")
    warm = _model(state, freeze_feature_encoder=True).set_stage("warmup").set_stage("full")
    assert not any(p.requires_grad for p in warm.audio_encoder.backbone.feature_extractor.parameters())


def _inductor_compiler_missing() -> str:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as exn:  # noqa: BLE001 - any failure here: inductor cannot build CPU kernels, the test skips
        return f"inductor's C++ compiler is not available: {exn}"
    return ""


# One layer per backbone and a two-layer conv front end (still 50 Hz frames): inductor builds
# every kernel with the C++ compiler, and the fewer distinct layers, the shorter the test.
SMALL = dict(
    audio_backbone={
        **TINY_HUBERT,
        "num_hidden_layers": 1,
        "conv_dim": [16, 16],
        "conv_kernel": [10, 32],
        "conv_stride": [10, 32],
    },
    image_backbone={**TINY_VIT, "num_hidden_layers": 1},
)


@pytest.mark.slow
@pytest.mark.skipif(bool(_inductor_compiler_missing()), reason=_inductor_compiler_missing() or "-")
def test_compiled_encoders_give_the_same_loss_and_gradients(batch):
    torch.manual_seed(0)
    state = build_model(ModelConfig.preset("tiny", **SMALL)).state_dict()
    reference = _loss_and_grads(_model(state, **SMALL), batch)
    torch._dynamo.reset()
    counters.clear()
    model = compile_encoders(_model(state, compile_encoders="default", **SMALL))
    assert list(model.state_dict()) == list(state)  # checkpoints keep their keys
    _assert_same_step(reference, _loss_and_grads(model, batch))
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2  # one graph per backbone
    torch._dynamo.reset()


def test_speed_options_are_validated_and_old_configs_still_load():
    for field, value in (
        ("attn_implementation", "flash_attention_2"),
        ("gradient_checkpointing", "half"),
        ("compile_encoders", "reduce-overhead"),
    ):
        with pytest.raises(ValueError, match=field):
            ModelConfig.preset("tiny", **{field: value})
    old = {**ModelConfig.preset("tiny").to_dict(), "gradient_checkpointing": True}
    assert ModelConfig.from_dict(old).gradient_checkpointing == "all"
    assert ModelConfig.from_dict({**old, "gradient_checkpointing": False}).gradient_checkpointing == "off"
    paper = ModelConfig.preset("paper")
    assert (paper.attn_implementation, paper.freeze_feature_encoder) == ("sdpa", False)
