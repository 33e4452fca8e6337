"""`scripts/demo.sh --types 3`: its config is the demo's with three typed streams and three heads, and
its arguments are checked before any work starts."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from training.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_three_type_config_is_the_demo_config_with_a_music_stream_and_head():
    demo = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())
    three = yaml.safe_load((ROOT / "configs/demo_types3.yaml").read_text())
    # the same run but for its streams, its heads and where it goes
    streams = three["data"].pop("streams")
    assert streams == {t: f"shards/synthetic_types3/{t}/train" for t in ("speech", "sound", "music")}
    assert three["model"].pop("head_types") == ["sound", "speech", "music"]
    assert {t: demo["data"].pop(t) for t in ("speech", "sound")} == {
        "speech": "shards/synthetic/speech/train",
        "sound": "shards/synthetic/sound/train",
    }
    assert (demo.pop("out_dir"), three.pop("out_dir")) == ("runs/demo", "runs/types3/demo")
    assert three == demo
    cfg = load_config(ROOT / "configs/demo_types3.yaml", ["data.streams.music=/elsewhere/music/train"])
    assert (cfg.model.head_types, cfg.model.num_heads, cfg.model.sound_head, cfg.model.speech_head) == (
        ["sound", "speech", "music"],
        3,
        0,
        1,
    )
    assert list(cfg.data.streams) == ["speech", "sound", "music"]
    assert cfg.data.streams["music"] == "/elsewhere/music/train"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--types", "4"], "error: --types 4: the generated world has 2 audio types"),
        (["--types"], "error: --types needs 2 or 3"),
        (["--types=3", "--ablation"], "error: --ablation is the two-type demo's"),
    ],
)
def test_demo_refuses_other_type_counts_before_any_work(args, message, tmp_path):
    # (were the check ever to pass, the demo would write under tmp_path, not the repository's runs/)
    env = {**os.environ, "DEMO_WORLD": str(tmp_path / "world"), "DEMO_RUNS": str(tmp_path / "runs")}
    done = subprocess.run(
        ["bash", "scripts/demo.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and message in done.stderr and done.stdout == ""
