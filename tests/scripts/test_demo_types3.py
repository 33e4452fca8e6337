"""`scripts/demo.sh --types 3`: its config extends the demo's with three typed streams and three
heads, and its arguments are checked before any work starts."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from training.config import config_tree, load_config

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"


def test_the_three_type_config_extends_the_demo_config_and_loads_as_its_full_copy_did(tmp_path):
    # configs/demo_types3.yaml over demo.yaml as both stood when it was a full copy of it: what the
    # full copy loaded to, whatever demo.yaml becomes later
    shutil.copy(FIXTURES / "demo_before_extends.yaml", tmp_path / "demo.yaml")
    shutil.copy(ROOT / "configs/demo_types3.yaml", tmp_path / "demo_types3.yaml")
    full_copy = load_config(FIXTURES / "demo_types3_before_extends.yaml", [])
    assert load_config(tmp_path / "demo_types3.yaml", []) == full_copy

    # the live pair: the same run but for its streams, its heads and where it goes
    demo = config_tree(load_config(ROOT / "configs/demo.yaml", []))
    three = config_tree(load_config(ROOT / "configs/demo_types3.yaml", []))
    streams = {t: f"shards/synthetic_types3/{t}/train" for t in ("speech", "sound", "music")}
    assert three["data"].pop("streams") == streams
    assert (demo["data"].pop("streams"), three["data"].pop("speech"), three["data"].pop("sound")) == ({}, "", "")
    assert {t: demo["data"].pop(t) for t in ("speech", "sound")} == {
        "speech": "shards/synthetic/speech/train",
        "sound": "shards/synthetic/sound/train",
    }
    heads = ("head_types", "num_heads", "sound_head", "speech_head")
    assert [three["model"].pop(k) for k in heads] == [["sound", "speech", "music"], 3, 0, 1]
    assert [demo["model"].pop(k) for k in heads] == [["sound", "speech"], 2, 0, 1]
    assert (demo.pop("out_dir"), three.pop("out_dir")) == ("runs/demo", "runs/types3/demo")
    assert three == demo
    cfg = load_config(ROOT / "configs/demo_types3.yaml", ["data.streams.music=/elsewhere/music/train"])
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
