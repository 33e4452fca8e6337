"""The typed training configuration: YAML presets, overrides, deep-merged model blocks, typo rejection."""

from pathlib import Path

import pytest
import yaml

from model.config import TINY_HUBERT, ModelConfig
from training.config import ConfigError, config_tree, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_a_model_block_is_deep_merged_over_its_preset():
    demo = load_config(ROOT / "configs" / "demo.yaml", [])
    backbone = demo.model.audio_backbone
    assert backbone == {**TINY_HUBERT, "feat_extract_norm": "group", "conv_dim": [32] * 4,
                        "conv_stride": [10, 4, 4, 2], "conv_kernel": [20, 8, 4, 4]}
    assert demo.model == ModelConfig.preset("tiny", audio_backbone=backbone)
    deeper = load_config(ROOT / "configs" / "demo.yaml", ["model.audio_backbone.num_hidden_layers=3"])
    assert deeper.model.audio_backbone == {**backbone, "num_hidden_layers": 3}


def test_every_loader_option_is_a_typed_data_key():
    cfg = load_config(None, ["data.augment.scale=[0.2, 1]", "data.mix.level_db=[-30, -20]", "data.splice.prob=0.5",
                             "data.masking.prob=0.25", "data.max_consecutive_skips=7", "data.clip_seconds=2.5"])
    d = cfg.data
    assert (d.augment.scale, d.mix.level_db, d.splice.prob, d.masking.prob) == ((0.2, 1), (-30, -20), 0.5, 0.25)
    assert (d.max_consecutive_skips, d.clip_samples) == (7, 40_000)


@pytest.mark.parametrize("override, message", [
    ("data.mix.snr=[0, 1]", r"unknown config.data.mix keys \['snr'\]"),
    ("model.lora_rnk=4", "unknown ModelConfig fields"),
    ("model.preset=huge", "unknown model preset"),
    ("data.image_size=64", r"\['image_size'\] are set by the trainer"),
    ("loss.regularizers.tvv=1", r"unknown config.loss.regularizers keys \['tvv'\]"),
    ("steps", "must look like key.sub=value"),
])
def test_typos_and_trainer_owned_keys_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs" / "tiny.yaml", [override])


@pytest.mark.parametrize("name", ["tiny", "demo", "paper"])
def test_the_written_config_reads_back_to_the_same_config(name, tmp_path):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", ["data.mix.snr_db=[1, 2]"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config_tree(cfg), sort_keys=False))
    assert load_config(tmp_path / "config.yaml", []) == cfg
