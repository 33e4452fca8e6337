import pytest
import torch
from torch import nn
from transformers import ViTConfig, ViTModel

from model.config import ModelConfig
from model.encoders import attention_projection_names
from model.factory import build_model

SR = 16_000


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(ModelConfig.preset("tiny"))


def _audio(batch, seconds, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    return torch.randn(batch, n, generator=gen) * 0.1, torch.ones(batch, n, dtype=torch.bool)


def test_shapes_of_the_tiny_model(tiny):
    cfg = tiny.config
    tiny.eval()
    images = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    v = tiny.encode_image(images)
    assert v.shape == (2, cfg.code_dim, cfg.num_heads, 14, 14)
    wave, mask = _audio(2, 10.0)
    a, frames = tiny.encode_audio(wave, mask)
    # HuBERT: 499 frames at 50 Hz for 10 s; two stride-3 pools: 499 // 3 // 3 = 55
    assert a.shape == (2, cfg.code_dim, cfg.num_heads, 1, 55)
    assert frames.shape == (2, 55) and frames.dtype == torch.bool and bool(frames.all())
    assert tiny.logit_scale().item() == pytest.approx(1.0)


def test_image_pooling_applies_only_in_training():
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny", image_train_pool=2))
    images = torch.randn(1, 3, 112, 112)
    model.train()
    assert model.encode_image(images).shape[-2:] == (7, 7)
    model.eval()
    assert model.encode_image(images).shape[-2:] == (14, 14)


def test_other_image_sizes_interpolate_position_embeddings(tiny):
    tiny.eval()
    assert tiny.encode_image(torch.randn(1, 3, 64, 96)).shape[-2:] == (8, 12)
    with pytest.raises(ValueError, match="patch size"):
        tiny.encode_image(torch.randn(1, 3, 100, 100))


def test_frame_mask_follows_the_valid_samples(tiny):
    n = 10 * SR
    mask = torch.zeros(4, n, dtype=torch.bool)
    mask[0] = True
    mask[1, : n // 2] = True
    mask[3, 3 * SR : 5 * SR] = True  # a splice-like segment in the middle
    frames = tiny.frame_mask_from_samples(mask)
    assert frames.shape == (4, 55)
    counts = frames.sum(1).tolist()
    assert counts[0] == 55 and counts[2] == 0
    assert abs(counts[1] - 55 / 2) <= 1
    middle = frames[3].nonzero().flatten()
    assert abs(len(middle) - 11) <= 1 and 15 <= middle.min() <= 17 and 26 <= middle.max() <= 28


def test_padded_samples_do_not_change_the_features(tiny):
    tiny.eval()
    wave, mask = _audio(2, 4.0, seed=1)
    mask[0, 2 * SR :] = False
    clean = wave * mask
    noisy = torch.where(mask, wave, torch.randn_like(wave))
    with torch.no_grad():
        a1, f1 = tiny.encode_audio(clean, mask)
        a2, f2 = tiny.encode_audio(noisy, mask)
    torch.testing.assert_close(a1, a2)
    assert torch.equal(f1, f2) and f1[0].sum() < f1[1].sum()


def test_audio_input_validation(tiny):
    wave, mask = _audio(2, 1.0)
    mask[1] = False
    with pytest.raises(ValueError, match="no valid samples"):
        tiny.encode_audio(wave, mask)
    with pytest.raises(ValueError, match="bool"):
        tiny.encode_audio(wave, torch.ones_like(wave))
    with pytest.raises(ValueError, match="too short"):
        tiny.frame_mask_from_samples(torch.ones(1, 500, dtype=torch.bool))


def _trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_stage_parameters():
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny"))
    names = {name for name, _ in model.named_parameters()}
    aligners = {n for n in names if n.startswith(("image_aligner.", "audio_aligner."))}
    lora = {n for n in names if "lora_" in n}
    hubert = {n for n in names if n.startswith("audio_encoder.")}
    vit_base = {n for n in names if n.startswith("image_encoder.") and "lora_" not in n}
    assert lora and vit_base and hubert and aligners

    assert model.stage == "warmup"
    assert _trainable(model) == aligners | {"log_logit_scale"}
    model.set_stage("full")
    assert _trainable(model) == aligners | {"log_logit_scale"} | lora | hubert
    assert not (_trainable(model) & vit_base)
    model.set_stage("warmup")
    assert _trainable(model) == aligners | {"log_logit_scale"}
    with pytest.raises(ValueError, match="stage"):
        model.set_stage("finetune")


def test_spec_augment_embedding_trains_only_when_spec_augment_is_on():
    torch.manual_seed(0)
    cfg = ModelConfig.preset(
        "tiny", audio_backbone={**ModelConfig.preset("tiny").audio_backbone, "mask_time_prob": 0.05}
    )
    model = build_model(cfg).set_stage("full")
    assert "audio_encoder.backbone.masked_spec_embed" not in _trainable(model)
    model = build_model(ModelConfig.from_dict({**cfg.to_dict(), "audio_spec_augment": True})).set_stage("full")
    assert "audio_encoder.backbone.masked_spec_embed" in _trainable(model)


def _one_step(model, stage):
    model.set_stage(stage)
    model.train()
    # LoRA B starts at zero, so LoRA A would get no gradient on a first step; nudge B first.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.01)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    images = torch.randn(2, 3, 112, 112)
    wave, mask = _audio(2, 1.0, seed=3)
    v = model.encode_image(images)
    a, frames = model.encode_audio(wave, mask)
    loss = (a.mean((1, 3, 4)).sum() - v.mean((1, 3, 4)).sum()) ** 2 + model.logit_scale()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def test_warmup_step_changes_only_aligners_and_temperature():
    torch.manual_seed(0)
    changed = _one_step(build_model(ModelConfig.preset("tiny")), "warmup")
    assert changed and all(n.startswith(("image_aligner.", "audio_aligner.", "log_logit_scale")) for n in changed)


def test_full_step_changes_lora_and_hubert_but_never_the_vit_weights():
    torch.manual_seed(0)
    changed = _one_step(build_model(ModelConfig.preset("tiny")), "full")
    assert any("lora_A" in n for n in changed)
    assert any(n.startswith("audio_encoder.backbone.encoder.layers") for n in changed)
    assert not [n for n in changed if n.startswith("image_encoder.") and "lora_" not in n]


def test_lora_targets_are_found_in_the_module_tree():
    vit = ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=16,
            patch_size=8,
        ),
        add_pooling_layer=False,
    )
    found = set(attention_projection_names(vit))
    assert found in ({"q_proj", "k_proj", "v_proj"}, {"query", "key", "value"})  # transformers 5.x / 4.x

    class OldStyleAttention(nn.Module):  # the transformers 4.x naming
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    tree = nn.ModuleDict({"attention": OldStyleAttention(), "output": nn.Linear(4, 4)})
    assert attention_projection_names(tree) == ["key", "query", "value"]
    with pytest.raises(ValueError, match="lora_targets"):
        attention_projection_names(nn.Linear(4, 4))


def test_paper_architecture_builds_from_configs_alone():
    with torch.device("meta"):  # shapes only: no memory, no download
        model = build_model(ModelConfig.preset("paper", pretrained=False))
    vit = sum(p.numel() for n, p in model.image_encoder.named_parameters() if "lora_" not in n)
    hubert = sum(p.numel() for p in model.audio_encoder.parameters())
    lora = sum(p.numel() for p in model.image_encoder.lora_parameters())
    assert 21.5e6 < vit < 22.0e6  # ViT-S/8
    assert 315e6 < hubert < 316e6  # HuBERT Large
    assert lora == 12 * 3 * 2 * 8 * 384  # rank 8 on q, k, v of 12 layers
    assert model.image_aligner.proj.out_channels == 384  # 2 heads of 192


def test_config_json_round_trip_and_validation():
    cfg = ModelConfig.preset("tiny", code_dim=48, audio_pool=(3, 2))
    again = ModelConfig.from_json(cfg.to_json())
    assert again == cfg and again.audio_pool == [3, 2]
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "heads": 3})
    with pytest.raises(ValueError, match="sound_head"):
        ModelConfig.preset("tiny", sound_head=2)
    with pytest.raises(ValueError, match="differ"):
        ModelConfig.preset("tiny", speech_head=0)
    with pytest.raises(ValueError, match="preset"):
        ModelConfig.preset("huge")


def test_channels_last_audio_front_end_is_the_same_function():
    """Same outputs, gradients and state-dict keys as transformers' front end (HuBERT-style
    layer-norm conv layers), with padding, in training mode."""
    torch.manual_seed(0)
    ref = build_model(ModelConfig.preset("tiny"))
    fast = build_model(ModelConfig.preset("tiny", audio_channels_last=True))
    assert type(fast.audio_encoder.backbone.feature_extractor).__name__ == "ChannelsLastFeatureEncoder"
    assert list(ref.state_dict()) == list(fast.state_dict())
    fast.load_state_dict(ref.state_dict())
    wave, mask = _audio(3, 1.0)
    mask[1, 9000:] = False
    outs = []
    for model in (ref, fast):
        model.train()
        model.set_stage("full")
        a, frames = model.encode_audio(wave, mask)
        a.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.audio_encoder.named_parameters() if p.grad is not None}
        outs.append((a.detach(), frames, grads))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-4)
    assert torch.equal(outs[0][1], outs[1][1])
    assert outs[0][2].keys() == outs[1][2].keys() and any("feature_extractor" in n for n in outs[0][2])
    for name in outs[0][2]:
        torch.testing.assert_close(outs[0][2][name], outs[1][2][name], atol=1e-5, rtol=1e-3, msg=name)
