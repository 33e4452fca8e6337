"""Fine-tuning (training/finetune.py): ``train.py init_from=CKPT`` from this project's checkpoint and
from a DenseAV file, the architecture check, and ``--resume`` of a fine-tuning run."""

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from model.denseav_convert import convert
from model.factory import build_model
from tests.model.test_denseav import HPARAMS, MANIFEST, manifest_keys, write
from train import app
from training.config import ConfigError, load_config
from training.finetune import start_from
from training.loop import train

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread for the comparisons around the runs (see tests/model/conftest.py)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _overrides(shards, out, **kw):
    base = {
        "data.speech": shards.root / "speech",
        "data.sound": shards.root / "sound",
        "data.batch_size": 4,
        "data.num_workers": 1,  # and the trainer one thread (two spin against the other pytest worker)
        "data.clip_seconds": 1.0,
        "data.shuffle_buffer": 8,
        "out_dir": out,
        "steps": 2,
        "warmup_steps": 0,
        "ckpt_every": 0,
        "log_with": "none",
        "optim.lr_warmup_steps": 1,
    }
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


def test_finetune_from_a_run_starts_from_its_weights_and_resumes_as_its_own_run(shards, tiny_checkpoint, tmp_path):
    init = tmp_path / "init"
    shutil.copytree(tiny_checkpoint, init)  # seed 1: every weight differs from this run's seeded init (seed 0)
    out = tmp_path / "run"
    overrides = {"init_from": init, "freeze": "[image]", "optim.backbone_lr_scale": 0.5}
    cfg = load_config(TINY, _overrides(shards, out, steps=1, **overrides))
    train(cfg)
    start, final = load_file(init / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    torch.manual_seed(cfg.seed)
    seeded = build_model(cfg.model).state_dict()
    image = [k for k in start if k.startswith("image_encoder.")]
    # the ViT never trains (its LoRA frozen by freeze=[image]): still the checkpoint's weights, not the seeded ones
    assert all(torch.equal(final[k], start[k]) for k in image)
    assert sum(not torch.equal(seeded[k], start[k]) for k in image) >= 20  # every random weight (not LN, biases)
    for part in ("audio_encoder.", "audio_aligner.", "image_aligner."):  # trained from there
        assert any(not torch.equal(final[k], start[k]) for k in start if k.startswith(part)), part
    groups = torch.load(out / "checkpoints" / "step_00000001" / "optimizer.pt", weights_only=True)["param_groups"]
    assert [g["lr_scale"] for g in groups] == [1.0, 0.5] and groups[1]["lr"] == groups[0]["lr"] / 2

    record = json.loads((out / "summary.json").read_text())["init_from"]
    digest = hashlib.sha256((init / "model.safetensors").read_bytes()).hexdigest()
    assert (record["spec"], record["kind"], record["sha256"], record["heads"]) == (
        str(init),
        "project",
        digest,
        {"0": 0, "1": 1},
    )
    assert json.loads((out / "final" / "config.json").read_text())["meta"]["init_from"] == record
    assert f"init_from: {init}" in (out / "config.yaml").read_text()

    # --resume continues the fine-tuning run from its own checkpoint: init_from is not read again
    # (its directory is gone), and with no step left the final model is the run's, not init_from's
    shutil.rmtree(init)
    train(cfg, resume=True)
    resumed = load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(resumed[k], final[k]) for k in final)
    assert json.loads((out / "summary.json").read_text())["init_from"] == record

    # the optimizer's groups are the checkpoint's: another optim.backbone_lr_scale is one line, before any step
    ckpt = out / "checkpoints" / "step_00000001"
    for scale, groups in ((1, "1"), (0.25, "0.25")):
        args = _overrides(shards, out, steps=2, **{**overrides, "optim.backbone_lr_scale": scale})
        result = CliRunner().invoke(app, ["--config", str(TINY), *args, "--resume"])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output + repr(result.exception)
        assert result.output.strip().splitlines()[-1] == (
            f"error: --resume: {ckpt} was trained with optim.backbone_lr_scale=0.5, this run sets {groups}; a "
            "resumed run keeps its optimizer's parameter groups: resume with optim.backbone_lr_scale=0.5, or start "
            f"a new run from its weights with init_from={ckpt} optim.backbone_lr_scale={groups} (another out_dir, "
            "no --resume)"
        )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001"]


def _denseav_file(tmp_path: Path) -> Path:
    """A tiny two-head DenseAV .ckpt (the key manifest of tests/model/test_denseav.py) whose aligners'
    24 channels split into DenseAV's 6 attention heads without padding, as the released models' 384."""
    sizes = {**MANIFEST["sizes"]["tiny"], "C": 24, "CP": 24}
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in manifest_keys("peft07", sizes).items():
        t = torch.randn(shape, generator=g)
        if key.endswith(("norm.weight", "norm1.weight", "norm2.weight")):
            t = 1 + 0.1 * t
        elif key.endswith("original0"):
            t = 1 + 0.1 * t.abs()
        elif key == "sim_cal.w":
            t = torch.tensor([math.log(3.0)])
        else:
            t = 0.1 * t if t.dim() > 1 else 0.02 * t
        state[key] = t
    return write(state, tmp_path / "denseav" / "denseav_2head.ckpt", "ckpt", {**HPARAMS, "code_dim": 24})


def test_finetune_from_a_denseav_file_computes_its_function_with_the_heads_mapped(shards, tmp_path):
    path = _denseav_file(tmp_path)
    base = _overrides(shards, tmp_path / "run", steps=1, init_from=path, **{"model.image_size": 32})
    cfg = load_config(TINY, [*base, "init_speech_head=0"])
    torch.manual_seed(cfg.seed)
    with pytest.raises(ConfigError) as err:  # the tiny preset is not DenseAV's architecture
        start_from(build_model(cfg.model), cfg)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"init_from {path}: this run's model is not the checkpoint's")
    assert "model.code_dim is 32 here, 12 in the checkpoint" in message
    fix = re.search(r"; set (.*)$", message).group(1).split()

    # DenseAV's head 0 is given as speech: it becomes this run's speech head (1), its head 1 the sound head
    cfg = load_config(TINY, [*base, *fix, "init_speech_head=0"])
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    record = start_from(model, cfg)
    assert record["heads"] == {"0": 1, "1": 0} and record["head_assignment"] == "given (speech_head)"
    dense, _ = convert(path)
    model.eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    wave = 0.1 * torch.randn(2, 164_200, generator=torch.Generator().manual_seed(2))  # DenseAV's clip: no padding
    full = torch.ones_like(wave, dtype=torch.bool)
    with torch.no_grad():
        v, vd = model.encode_image(images), dense.encode_image(images)
        (a, mask), (ad, mask_d) = model.encode_audio(wave, full), dense.encode_audio(wave, full)
    assert torch.equal(mask, mask_d)
    for head, theirs in ((0, 1), (1, 0)):
        torch.testing.assert_close(v[:, :, head], vd[:, :, theirs], rtol=0, atol=1e-5)
        torch.testing.assert_close(a[:, :, head], ad[:, :, theirs], rtol=0, atol=1e-5)
    assert float(model.logit_scale().detach()) == pytest.approx(float(dense.logit_scale().detach()))

    # train.py's path, the speech head told from the activations on the probe clips
    train(load_config(TINY, [*base, *fix]))
    record = json.loads((tmp_path / "run" / "summary.json").read_text())["init_from"]
    assert record["kind"] == "denseav" and record["head_assignment"]["method"].startswith("activations")
    assert record["heads"][str(1)] == record["head_assignment"]["speech_head"]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            ["model.code_dim=16"],
            r"init_from \S+/trained/final: this run's model is not the checkpoint's architecture: model.code_dim "
            r"is 16 here, 32 in the checkpoint; use the checkpoint's model config \(--config \S+/trained/config.yaml,"
            r".* or set model.code_dim=32$",
        ),
        (["audio_init=x.safetensors"], r"holds the whole model, audio backbone included: drop audio_init"),
        (["init_from=/nonexistent/final"], r"init_from /nonexistent/final: /nonexistent/final does not exist"),
        (["init_speech_head=0"], r"checkpoint, which records its own heads: drop init_speech_head"),
    ],
)
def test_train_py_refuses_a_checkpoint_it_cannot_start_from_with_one_line(
    shards, tiny_checkpoint, tmp_path, extra, expected
):
    trained = tmp_path / "trained"
    shutil.copytree(tiny_checkpoint, trained / "final")
    (trained / "config.yaml").write_text("model: tiny\n")
    args = [*_overrides(shards, tmp_path / "run", init_from=trained / "final"), *extra]
    result = CliRunner().invoke(app, ["--config", str(TINY), *args])
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and re.search(expected, lines[-1]), lines[-1]
    assert "Traceback" not in result.output and not (tmp_path / "run" / "checkpoints").exists()
