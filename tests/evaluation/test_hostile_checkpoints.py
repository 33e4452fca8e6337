"""Hostile checkpoints through the real `evaluate.py` CLI: each is one line naming the broken file
and how checkpoints are written (exit 2), never a traceback, and nothing is written. Weights that
load but cannot be used (NaN, integer, not tensors; project and DenseAV files) name the file and the
first bad key; a model whose features overflow writes no results."""

import json
import shutil

import pytest
import torch
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
    (
        "weights not safetensors",
        WEIGHTS_FILE,
        lambda c: (c / WEIGHTS_FILE).write_bytes(b"\x00" * 64 + b"junk"),
        "not a readable safetensors",
    ),
    ("missing weights", WEIGHTS_FILE, lambda c: (c / WEIGHTS_FILE).unlink(), "does not exist"),
    ("config not JSON", CONFIG_FILE, lambda c: (c / CONFIG_FILE).write_text('{"format": "seeing'), "is not JSON"),
    ("config not UTF-8", CONFIG_FILE, lambda c: (c / CONFIG_FILE).write_bytes(b"\xff\xfe{}"), "is not JSON"),
    ("config a list", CONFIG_FILE, lambda c: (c / CONFIG_FILE).write_text("[1, 2]"), "is not a model checkpoint"),
    ("missing config", CONFIG_FILE, lambda c: (c / CONFIG_FILE).unlink(), "does not exist"),
    (
        "unknown top-level field",
        CONFIG_FILE,
        _edit_config(lambda d: d.update(optimizer={})),
        "unknown fields ['optimizer']",
    ),
    (
        "unknown model field",
        CONFIG_FILE,
        _edit_config(lambda d: d["model"].update(heads_per_type=3)),
        "unknown ModelConfig fields: ['heads_per_type']",
    ),
    ("unknown stage", CONFIG_FILE, _edit_config(lambda d: d.update(stage="finetune")), "does not describe a model"),
    (
        "weights of another config",
        WEIGHTS_FILE,
        _edit_config(lambda d: d["model"].update(code_dim=16)),
        "does not fit its config",
    ),
]


@pytest.mark.parametrize("case, broken, corrupt, says", CASES, ids=[c[0] for c in CASES])
def test_broken_checkpoint_is_one_clear_line(tiny_checkpoint, places_shards, tmp_path, case, broken, corrupt, says):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    corrupt(ckpt)
    out = tmp_path / "out"
    result = RUN.invoke(
        app, ["--checkpoint", str(ckpt), *OPTS, "--out", str(out), "table3", "--places", str(places_shards)]
    )
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
    result = RUN.invoke(
        app, ["--checkpoint", str(ckpt), *OPTS, "--out", str(tmp_path / "out"), "all", "--places", str(places_shards)]
    )
    assert result.exit_code == 2 and "failed" not in result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        line for line in result.output.splitlines() if WEIGHTS_FILE in line
    ]


def test_broken_ablation_checkpoint_names_the_option(tiny_checkpoint, places_shards, tmp_path):
    ablated = tmp_path / "ablated"
    shutil.copytree(tiny_checkpoint, ablated)
    (ablated / CONFIG_FILE).write_text("not json")
    result = RUN.invoke(
        app,
        [
            "--checkpoint",
            str(tiny_checkpoint),
            *OPTS,
            "--out",
            str(tmp_path / "out"),
            "table7",
            "--places",
            str(places_shards),
            "--audioset",
            str(places_shards),
            "--ablation",
            f"no dis={ablated}",
        ],
    )
    assert result.exit_code == 2
    assert f"error: --ablation no dis: checkpoint file {ablated / CONFIG_FILE} is not JSON" in result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- weights that load but cannot be used


def _project_weights(edit):
    def corrupt(ckpt):
        from safetensors.torch import load_file, save_file

        state = load_file(str(ckpt / WEIGHTS_FILE))
        edit(state)
        save_file(state, str(ckpt / WEIGHTS_FILE))

    return corrupt


def _all_nan(state):
    for key in state:
        state[key] = torch.full_like(state[key], float("nan"))


def _int_weight(state):
    state["image_aligner.proj.weight"] = (state["image_aligner.proj.weight"] * 100).to(torch.int32)


def _denseav(kind, edit, hparams=True):
    """A DenseAV-layout file (tests/model/test_denseav.py's manifest) changed by ``edit``."""
    from tests.model.test_denseav import HPARAMS, random_state, write

    def make(folder):
        state = random_state("peft05")
        edit(state)
        name = "denseav_2head.ckpt" if kind == "ckpt" else "DenseAV-sound-language/model.safetensors"
        return write(state, folder / name, kind, HPARAMS if hparams else None)

    return make


def _to_int8(state):
    for key in state:
        state[key] = (state[key] * 50).to(torch.int8)


# (case, how to make the checkpoint in a folder -> (path given, file named), what the message says)
UNUSABLE = [
    ("project: all weights NaN", "nan", "NaN or infinite values of"),
    ("project: an integer weight", "int", "image_aligner.proj.weight is int32, not floating point"),
    ("DenseAV: all weights NaN", _denseav("ckpt", _all_nan), "image_model.base_model.model.model.cls_token holds"),
    (
        "DenseAV: a string for a tensor",
        _denseav("ckpt", lambda s: s.update(audio_cls="a string")),
        "state-dict entry 'audio_cls' holds a str, not a tensor",
    ),
    (
        "DenseAV: int8 safetensors folder",
        _denseav("safetensors", _to_int8),
        "audio_aligner.mod_list.1.norm.bias is int8, not floating point",
    ),
]


@pytest.mark.parametrize("case, make, says", UNUSABLE, ids=[c[0] for c in UNUSABLE])
def test_unusable_weights_are_refused_naming_the_file_and_first_bad_key(
    tiny_checkpoint, places_shards, tmp_path, case, make, says
):
    if make in ("nan", "int"):
        ckpt = tmp_path / "ckpt"
        shutil.copytree(tiny_checkpoint, ckpt)
        _project_weights(_all_nan if make == "nan" else _int_weight)(ckpt)
        given, named = ckpt, ckpt / WEIGHTS_FILE
    else:
        named = make(tmp_path)
        given = named.parent if named.suffix == ".safetensors" else named  # the Hugging Face folder form
    out = tmp_path / "out"
    result = RUN.invoke(
        app, ["--checkpoint", str(given), *OPTS, "--out", str(out), "table3", "--places", str(places_shards)]
    )
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(named) in lines[0] and says in lines[0], (
        result.output
    )
    assert not out.exists()


def test_features_that_overflow_are_refused_not_written(tiny_checkpoint, places_shards, tmp_path):
    """Finite weights whose image features overflow to inf (then NaN through the layer norm)."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    key = "image_encoder.backbone.embeddings.patch_embeddings.projection.weight"
    _project_weights(lambda s: s.update({key: s[key] * 3e38}))(ckpt)
    out = tmp_path / "out"
    result = RUN.invoke(
        app, ["--checkpoint", str(ckpt), *OPTS, "--out", str(out), "table3", "--places", str(places_shards)]
    )
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert (
        result.output.startswith("error: the model's image features are NaN or infinite")
        and result.output.count("\n") == 1
    )
    assert not (out / "results.json").exists()


def test_num_heads_for_a_denseav_file_that_does_not_record_them(places_shards, tmp_path):
    from tests.model.test_denseav import random_state, write

    bare = write(random_state("peft07"), tmp_path / "weights.safetensors", "safetensors")  # no config.json beside it
    out = tmp_path / "out"
    args = [*OPTS, "--out", str(out), "table3", "--places", str(places_shards)]
    result = RUN.invoke(app, ["--checkpoint", str(bare), *args])
    assert result.exit_code == 2 and "pass --num-heads to ground or evaluate.py" in result.output, result.output
    result = RUN.invoke(app, ["--checkpoint", str(bare), "--num-heads", "1", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert json.loads((out / "results.json").read_text())["table3"]["model"]["config"]["num_heads"] == 1
