"""pretrained=True for real: tiny ViT and HuBERT written with save_pretrained, the model built from
those directories (Grounder.from_backbones and ModelConfig), one training step, and a checkpoint
round trip that grounds exactly as the model it came from. Nothing is downloaded."""

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from transformers import HubertConfig, HubertModel, ViTConfig, ViTModel

from ground.api import Grounder
from model.checkpoint import save_checkpoint
from model.config import TINY_HUBERT, TINY_VIT, ModelConfig
from model.factory import build_model
from tests.support import media
from training.config import TrainConfig
from training.step import pad_batch, step_loss

SAMPLES = 32_000  # 2 s clips keep the step fast


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(7)
    ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False).save_pretrained(root / "vit")
    HubertModel(HubertConfig(**TINY_HUBERT)).save_pretrained(root / "hubert")
    return root / "vit", root / "hubert"


def saved_tensor(directory, name):
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))[name]


def test_from_backbones_loads_the_backbones_from_directories(backbones, files):
    vit, hubert = backbones
    grounder = Grounder.from_backbones(str(vit), str(hubert), preset="tiny")
    model = grounder.runner.model
    image_weights = dict(model.image_encoder.backbone.named_parameters())
    key = next(k for k in image_weights if k.endswith("patch_embeddings.projection.weight"))
    torch.testing.assert_close(image_weights[key], saved_tensor(vit, key.split("base_model.model.")[-1]))
    audio_weights = dict(model.audio_encoder.backbone.named_parameters())
    torch.testing.assert_close(
        audio_weights["feature_projection.projection.weight"],
        saved_tensor(hubert, "feature_projection.projection.weight"),
    )
    assert grounder.description["pretrained"] == {"image": str(vit), "audio": str(hubert)}
    assert "aligners random" in grounder.description["weights"]
    result = grounder.ground(files["image"], files["speech"])
    assert result.maps["speech"].shape == (len(result.times), 120, 200)


def batch(n=2):
    rng = np.random.default_rng(0)
    speech = np.stack([media.speech_like(SAMPLES / 16_000, seed=i) for i in range(n)])
    sound = np.stack([media.noise(SAMPLES / 16_000, seed=10 + i) for i in range(n)])
    out = {
        "speech_audio": torch.from_numpy(speech),
        "sound_audio": torch.from_numpy(sound),
        "mix_audio": torch.from_numpy(speech + sound),
        "sound_image": torch.from_numpy(rng.standard_normal((n, 3, 112, 112)).astype(np.float32)),
        "speech_image": torch.from_numpy(rng.standard_normal((n, 3, 112, 112)).astype(np.float32)),
    }
    for kind in ("speech", "sound", "mix"):
        out[f"{kind}_mask"] = torch.ones(n, SAMPLES, dtype=torch.bool)
    out["speech_key"] = [f"item{i}" for i in range(n)]
    return out


def test_one_training_step_and_a_checkpoint_round_trip(backbones, files, tmp_path):
    vit, hubert = backbones
    config = ModelConfig.preset("tiny", pretrained=True, image_model_id=str(vit), audio_model_id=str(hubert))
    cfg = TrainConfig(model=config, mosaic_prob=0.0, seed=0)
    torch.manual_seed(0)
    model = build_model(config).set_stage("full")
    accelerator = Accelerator(cpu=True)
    net = accelerator.prepare(model)
    data, data["valid"] = pad_batch(batch(), 2, config.image_size, SAMPLES)
    params = model.stage_parameters("full")
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    total, terms, items = step_loss(net, model, data, cfg, "full", step=0, accelerator=accelerator)
    accelerator.backward(total)
    optimizer.step()
    assert items == 2 and torch.isfinite(total) and {"cor", "dis", "total"} <= set(terms)
    assert all(p.grad is not None for p in model.image_encoder.lora_parameters())
    assert sum(not torch.equal(b, p) for b, p in zip(before, params)) > len(params) // 2

    model.eval()
    trained = Grounder(model, {"model": "after one step"}).ground(files["image"], files["speech"])
    reloaded = Grounder.from_checkpoint(save_checkpoint(model, tmp_path / "ckpt"))
    assert reloaded.description["config"]["pretrained"] is False  # the checkpoint never downloads
    again = reloaded.ground(files["image"], files["speech"])
    for name in trained.heads:
        np.testing.assert_allclose(again.maps[name], trained.maps[name], rtol=1e-5, atol=1e-5, equal_nan=True)
        np.testing.assert_allclose(again.activation[name], trained.activation[name], rtol=1e-5, atol=1e-5)
