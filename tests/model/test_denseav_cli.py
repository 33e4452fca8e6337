"""A DenseAV-layout checkpoint through the real `evaluate.py` CLI and `load_any`'s folder form."""

import json

import pytest
from typer.testing import CliRunner

from evaluate import app
from model.loading import load_any
from tests.model.test_denseav import HPARAMS, LightningThing, random_state, write
from tests.support.testsets import make_retrieval_shards

RUN = CliRunner()


def test_evaluate_gives_a_denseav_row(tmp_path):
    ckpt = write(random_state("peft07"), tmp_path / "denseav_2head.ckpt", "ckpt", HPARAMS)
    places, audioset = tmp_path / "places", tmp_path / "audioset"
    make_retrieval_shards(places, 6, "speech")
    make_retrieval_shards(audioset, 6, "sound")
    out = tmp_path / "out"
    result = RUN.invoke(
        app,
        [
            "--checkpoint",
            str(ckpt),
            "--batch-size",
            "4",
            "--no-progress",
            "--workers",
            "1",
            "--out",
            str(out),
            "table3",
            "--places",
            str(places),
            "--audioset",
            str(audioset),
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    t3 = json.loads((out / "results.json").read_text())["table3"]
    assert t3["label"] == "denseav_2head.ckpt"
    model = t3["model"]
    assert model["kind"] == "denseav" and model["lora"] == "peft >= 0.7 (base_layer)"
    assert model["config"]["num_heads"] == 2 and model["head_assignment"]["method"].startswith("activations")
    assert "denseav_2head.ckpt" in (out / "tables.md").read_text()


@pytest.mark.parametrize("form", ["folder", "file"])
def test_hugging_face_copy_loads_as_folder_or_file(tmp_path, form):
    weights = write(
        random_state("peft05"), tmp_path / "DenseAV-sound-language" / "model.safetensors", "safetensors", HPARAMS
    )
    model, desc = load_any(weights.parent if form == "folder" else weights, speech_head=0)
    assert desc["kind"] == "denseav" and desc["hyper_parameters"]["sim_agg_heads"] == 2
    assert (model.config.speech_head, model.config.sound_head) == (0, 1)


def test_ground_runs_a_denseav_checkpoint(tmp_path):
    import numpy as np

    from ground.api import Grounder

    ckpt = write(random_state("peft05"), tmp_path / "denseav_2head.ckpt", "ckpt", HPARAMS)
    grounder = Grounder.from_checkpoint(ckpt, speech_head=1)
    r = np.random.default_rng(0)
    image = r.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    audio = (0.1 * r.standard_normal(3 * 16000)).astype(np.float32)
    result = grounder.ground(image, audio, 16000)
    assert grounder.head_names == ["sound", "speech"]
    assert result.maps["speech"].shape[1:] == (48, 64) and result.maps["total"].shape[0] == len(result.times)
    assert result.times[-1] < 3.0 and result.description["kind"] == "denseav"


def test_evaluate_refuses_a_pickled_denseav_checkpoint_in_one_line(tmp_path):
    import torch

    ckpt = tmp_path / "denseav_2head.ckpt"
    torch.save({"state_dict": random_state("peft05"), "hyper_parameters": LightningThing()}, ckpt)
    places = tmp_path / "places"
    make_retrieval_shards(places, 4, "speech")
    result = RUN.invoke(
        app,
        ["--checkpoint", str(ckpt), "--no-progress", "--out", str(tmp_path / "out"), "table3", "--places", str(places)],
    )
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {ckpt}: needs unpickling") and "safetensors" in lines[0]
    assert not (tmp_path / "out" / "results.json").exists()
