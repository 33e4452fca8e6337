"""Hostile checkpoints through the real `evaluate.py` CLI: each is one line naming the broken file
and how checkpoints are written (exit 2), never a traceback, and nothing is written."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from evaluate import app
from model.checkpoint import CONFIG_FILE, WEIGHTS_FILE

RUN = CliRunner()
OPTS = ["--batch-size", "4", "--no-progress", "--workers", "1"]
HOW = "written by train.py / model.checkpoint.save_checkpoint"


def _edit_config(change):
    def corrupt(ckpt):
        doc = json.loads((ckpt / CONFIG_FILE).read_text())
        change(doc)
        (ckpt / CONFIG_FILE).write_text(json.dumps(doc))
    return corrupt


def _truncate(ckpt):
    data = (ckpt / WEIGHTS_FILE).read_bytes()
    (ckpt / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])


# (case, broken file, how to break it, what the message says)
CASES = [
    ("empty weights", WEIGHTS_FILE, lambda c: (c / WEIGHTS_FILE).write_bytes(b""), "not a readable safetensors"),
    ("truncated weights", WEIGHTS_FILE, _truncate, "not a readable safetensors"),
    ("weights not safetensors", WEIGHTS_FILE, lambda c: (c / WEIGHTS_FILE).write_bytes(b"\x00" * 64 + b"junk"),
     "not a readable safetensors"),
    ("missing weights", WEIGHTS_FILE, lambda c: (c / WEIGHTS_FILE).unlink(), "does not exist"),
    ("config not JSON", CONFIG_FILE, lambda c: (c / CONFIG_FILE).write_text('{"format": "seeing'), "is not JSON"),
    ("config not UTF-8", CONFIG_FILE, lambda c: (c / CONFIG_FILE).write_bytes(b"\xff\xfe{}"), "is not JSON"),
    ("config a list", CONFIG_FILE, lambda c: (c / CONFIG_FILE).write_text("[1, 2]"), "is not a model checkpoint"),
    ("missing config", CONFIG_FILE, lambda c: (c / CONFIG_FILE).unlink(), "does not exist"),
    ("unknown top-level field", CONFIG_FILE, _edit_config(lambda d: d.update(optimizer={})), "unknown fields ['optimizer']"),
    ("unknown model field", CONFIG_FILE, _edit_config(lambda d: d["model"].update(heads_per_type=3)),
     "unknown ModelConfig fields: ['heads_per_type']"),
    ("unknown stage", CONFIG_FILE, _edit_config(lambda d: d.update(stage="finetune")), "does not describe a model"),
    ("weights of another config", WEIGHTS_FILE, _edit_config(lambda d: d["model"].update(code_dim=16)),
     "does not fit its config"),
]


@pytest.mark.parametrize("case, broken, corrupt, says", CASES, ids=[c[0] for c in CASES])
def test_broken_checkpoint_is_one_clear_line(tiny_checkpoint, places_shards, tmp_path, case, broken, corrupt, says):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    corrupt(ckpt)
    out = tmp_path / "out"
    result = RUN.invoke(app, ["--checkpoint", str(ckpt), *OPTS, "--out", str(out), "table3", "--places", str(places_shards)])
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint file "), result.output
    assert str(ckpt / broken) in lines[0] and says in lines[0] and HOW in lines[0]
    assert "point --checkpoint at another checkpoint" in lines[0]
    assert not out.exists()


def test_all_stops_at_a_broken_checkpoint(tiny_checkpoint, places_shards, tmp_path):
    """`all` does not report the same broken model once per table: it stops with the one line."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    (ckpt / WEIGHTS_FILE).write_bytes(b"")
    result = RUN.invoke(app, ["--checkpoint", str(ckpt), *OPTS, "--out", str(tmp_path / "out"), "all",
                              "--places", str(places_shards)])
    assert result.exit_code == 2 and "failed" not in result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        line for line in result.output.splitlines() if WEIGHTS_FILE in line]


def test_broken_ablation_checkpoint_names_the_option(tiny_checkpoint, places_shards, tmp_path):
    ablated = tmp_path / "ablated"
    shutil.copytree(tiny_checkpoint, ablated)
    (ablated / CONFIG_FILE).write_text("not json")
    result = RUN.invoke(app, ["--checkpoint", str(tiny_checkpoint), *OPTS, "--out", str(tmp_path / "out"), "table7",
                              "--places", str(places_shards), "--audioset", str(places_shards),
                              "--ablation", f"no dis={ablated}"])
    assert result.exit_code == 1
    assert f"error: --ablation no dis: checkpoint file {ablated / CONFIG_FILE} is not JSON" in result.output
    assert "Traceback" not in result.output
