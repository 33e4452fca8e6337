"""Self-supervised audio-backbone pretraining on real shards, and loading its output into training."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pretrain_audio
from model.factory import build_model
from training.config import load_config
from training.state import load_audio_backbone

ROOT = Path(__file__).resolve().parents[2]


def test_pretraining_learns_and_its_weights_load_into_the_model(shards, tmp_path):
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["data.clip_seconds=1.0"])
    out = tmp_path / "init" / "audio.safetensors"
    report = pretrain_audio.pretrain(
        cfg,
        f"{shards.root / 'speech'},{shards.root / 'sound'}",
        out,
        steps=40,
        clips=32,
        batch_size=8,
        clusters=8,
        lr=2e-3,
        seed=0,
    )
    assert report["clips"] == 32 and report["frames_with_audio"] > 0
    assert report["loss_last"] < report["loss_first"], report
    written = json.loads(out.with_suffix(".json").read_text())
    assert written["steps"] == 40 and written["threads"] == torch.get_num_threads()

    model = build_model(cfg.model)
    load_audio_backbone(model, str(out))
    saved = load_file(str(out))
    for name, value in model.audio_encoder.backbone.state_dict().items():
        torch.testing.assert_close(value, saved[name], msg=name)

    other = load_config(ROOT / "configs" / "demo.yaml", [])  # another audio architecture
    with pytest.raises(ValueError, match="does not match"):
        load_audio_backbone(build_model(other.model), str(out))


def test_the_command_leaves_a_core_free_unless_told_otherwise(monkeypatch):
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert pretrain_audio.cpu_threads() == max(1, (os.cpu_count() or 1) - 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert pretrain_audio.cpu_threads() == 3
    assert pretrain_audio.cpu_threads(2) == 2  # --threads wins
