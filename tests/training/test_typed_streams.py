"""K >= 2 typed audio streams through the trainer's side: the config's check that
the heads name the data's streams, a K = 3 step (padding, mosaic, the loss over a pair mixture) and
the mixture membership of a gathered batch."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from typer.testing import CliRunner

import train
from model.config import ModelConfig
from model.factory import build_model
from training.config import ConfigError, TrainConfig, config_tree, load_config
from training.step import mixed_rows, mixture_membership, pad_batch, step_loss

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"
STREAMS = "data.streams={speech: s, sound: a, music: m}"
TYPES = ("speech", "sound", "music")
N, SIZE = 9_600, 64


def test_k3_config_reads_back_and_the_heads_must_name_the_streams(tmp_path):
    cfg = load_config(TINY, [STREAMS, "model.head_types=[music, speech, sound]"])
    assert (cfg.model.num_heads, cfg.model.sound_head, cfg.model.speech_head) == (3, 2, 1)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config_tree(cfg), sort_keys=False))
    assert load_config(tmp_path / "config.yaml", []) == cfg
    with pytest.raises(ConfigError, match=r"model.head_types \['sound', 'speech'\] must name the data's stream types"):
        load_config(TINY, [STREAMS])
    with pytest.raises(ConfigError, match=r"model.head_types \['sound', 'music'\] must name .* \['speech', 'sound'\]"):
        load_config(TINY, ["model.head_types=[sound, music]"])
    line = CliRunner().invoke(train.app, ["--config", str(TINY), "model.head_types=[speech, sound, music]"])
    assert line.exit_code == 2 and "Traceback" not in line.output
    assert line.output.strip().splitlines() == [
        "error: model.head_types ['speech', 'sound', 'music'] must name the data's stream types ['speech', 'sound'], "
        "one head each: set model.head_types to ['speech', 'sound'] (in any order), or give data.streams the heads' "
        "types (from the override 'model.head_types=[speech, sound, music]')"
    ]


def _batch(b=3, mix_types=TYPES, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {"types": TYPES, "mix_types": mix_types}
    for kind in TYPES:
        batch[f"{kind}_audio"] = 0.1 * torch.randn(b, N, generator=g)
        batch[f"{kind}_mask"] = torch.ones(b, N, dtype=torch.bool)
        batch[f"{kind}_image"] = torch.randn(b, 3, SIZE, SIZE, generator=g)
        batch[f"{kind}_splice"] = torch.zeros(b, N, dtype=torch.bool)
        batch[f"{kind}_key"] = [f"{kind}{i}" for i in range(b)]
    batch["mix_audio"] = sum(batch[f"{kind}_audio"] for kind in mix_types)
    batch["mix_mask"] = torch.ones(b, N, dtype=torch.bool)
    return batch


def test_a_k3_step_pads_every_type_and_mixes_the_batch_pair_only():
    cfg = TrainConfig(model=ModelConfig.preset("tiny", image_size=SIZE, head_types=list(TYPES)), mosaic_prob=0.5)
    torch.manual_seed(0)
    model = build_model(cfg.model).set_stage("full").train()
    batch, batch["valid"] = pad_batch(_batch(mix_types=("sound", "music")), 4, SIZE, N)
    assert batch["music_image"].shape == (4, 3, SIZE, SIZE) and batch["music_splice"].shape == (4, N)
    assert batch["mix_types"] == ("sound", "music") and batch["valid"].tolist() == [True] * 3 + [False]
    cpu = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"))
    total, terms, items = step_loss(model, model, batch, cfg, "full", 0, cpu)
    assert items == 3 and torch.isfinite(total)
    assert {t for t in terms if t.startswith(("cor/", "dis/"))} == {
        "cor/music",
        "cor/sound",
        "cor/speech",
        "dis/music",
        "dis/sound",
    }
    total.backward()
    assert model.image_aligner.proj.weight.grad.abs().sum() > 0


def test_a_gathered_batch_of_different_pairs_scores_each_type_over_its_own_items():
    """Two processes' batches, each mixing its own pair, gathered in rank order."""
    first = mixture_membership({"mix_types": ("speech", "sound")}, TYPES, 3)
    second = mixture_membership({"mix_types": ("speech", "music")}, TYPES, 3)
    mixed, rows = mixed_rows(torch.cat([first, second]), TYPES, "cpu")
    assert mixed == TYPES and set(rows) == {"sound", "music"}  # every item's mixture holds speech
    assert rows["sound"].tolist() == [0, 1, 2] and rows["music"].tolist() == [3, 4, 5]
    mixed, rows = mixed_rows(mixture_membership({"mix_types": ("music", "sound")}, TYPES, 4), TYPES, "cpu")
    assert mixed == ("sound", "music") and rows == {}
