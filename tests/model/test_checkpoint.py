import json

import pytest
import torch
from safetensors import SafetensorError, safe_open

from model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, read_checkpoint_info, save_checkpoint
from model.config import ModelConfig
from model.factory import build_model

SR = 16_000


@pytest.fixture(scope="module")
def trained():
    """A tiny model whose every weight (LoRA B included, which starts at zero) differs from init."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny")).set_stage("full")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _inputs():
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 112, 112, generator=gen)
    wave = 0.1 * torch.randn(2, 2 * SR, generator=gen)
    mask = torch.ones(2, 2 * SR, dtype=torch.bool)
    mask[1, SR:] = False
    return images, wave, mask


def test_round_trip_gives_identical_outputs(trained, tmp_path):
    save_checkpoint(trained, tmp_path, meta={"step": 7, "note": "x"})
    loaded = load_checkpoint(tmp_path)
    images, wave, mask = _inputs()
    with torch.no_grad():
        assert torch.equal(trained.encode_image(images), loaded.encode_image(images))
        a1, f1 = trained.encode_audio(wave, mask)
        a2, f2 = loaded.encode_audio(wave, mask)
    assert torch.equal(a1, a2) and torch.equal(f1, f2)
    assert torch.equal(trained.logit_scale(), loaded.logit_scale())
    assert loaded.stage == "full" and not loaded.training
    info = read_checkpoint_info(tmp_path)
    assert info["meta"] == {"step": 7, "note": "x"} and info["stage"] == "full"


def test_config_records_the_exact_architecture_without_downloads(trained, tmp_path):
    save_checkpoint(trained, tmp_path)
    doc = json.loads((tmp_path / CONFIG_FILE).read_text())
    model_cfg = ModelConfig.from_dict(doc["model"])
    assert model_cfg.pretrained is False
    assert model_cfg.image_backbone["hidden_size"] == trained.image_encoder.backbone.config.hidden_size
    assert model_cfg.audio_backbone["conv_dim"] == list(trained.audio_encoder.backbone.config.conv_dim)
    # plain safetensors: readable without torch.load, every tensor of the state dict present
    with safe_open(str(tmp_path / WEIGHTS_FILE), framework="pt") as f:
        assert set(f.keys()) == set(trained.state_dict())
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_checkpoints_fail_clearly(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="config"):
        load_checkpoint(tmp_path)
    save_checkpoint(trained, tmp_path)
    doc = json.loads((tmp_path / CONFIG_FILE).read_text())
    doc["model"]["code_dim"] = 16  # weights no longer fit
    (tmp_path / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="does not fit its config"):
        load_checkpoint(tmp_path)
    doc["format"] = "something-else"
    (tmp_path / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="not a model checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(TypeError):
        save_checkpoint(trained, tmp_path / "other", meta={"bad": object()})


def test_a_save_that_fails_leaves_the_previous_checkpoint_whole(trained, tmp_path):
    """The weights and config.json change together: a save that fails at either file leaves the old
    pair as it was (config.json, the commit marker, goes only once both new files are complete)."""
    from pipeline import atomic

    save_checkpoint(trained, tmp_path, meta={"step": 1})
    before = {name: (tmp_path / name).read_bytes() for name in (WEIGHTS_FILE, CONFIG_FILE)}
    for blocked in (WEIGHTS_FILE, CONFIG_FILE):
        blocker = atomic.temp_path(tmp_path / blocked)
        blocker.mkdir()  # the temporary file cannot be written: a full disk, as far as the save can tell
        with pytest.raises((OSError, SafetensorError)):  # safetensors reports its I/O errors as its own
            save_checkpoint(trained, tmp_path, meta={"step": 2})
        blocker.rmdir()
        assert {name: (tmp_path / name).read_bytes() for name in before} == before
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
    save_checkpoint(trained, tmp_path, meta={"step": 2})
    assert read_checkpoint_info(tmp_path)["meta"] == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
