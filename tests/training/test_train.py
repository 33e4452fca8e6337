"""The trainer on tiny shards from the real shard builder, with the tiny random-weight model."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evaluation.validation import validate
from model.checkpoint import load_checkpoint
from model.factory import build_model
from pipeline.data.loader import TrainLoader
from tests.support import procs, shardgen
from training.config import load_config
from training.loop import train
from training.step import lr_at

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _overrides(shards, out, **kw):
    base = {
        "data.speech": shards.root / "speech",
        "data.sound": shards.root / "sound",
        "data.batch_size": 4,
        "data.num_workers": 0,
        "data.clip_seconds": 1.0,
        "data.shuffle_buffer": 8,
        "out_dir": out,
        "steps": 6,
        "warmup_steps": 2,
        "log_every": 2,
        "ckpt_every": 3,
        "optim.lr_warmup_steps": 2,
    }
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


def _cfg(shards, out, **kw):
    return load_config(ROOT / "configs" / "tiny.yaml", _overrides(shards, out, **kw))


def test_config_presets_and_overrides(tmp_path):
    paper = load_config(ROOT / "configs" / "paper.yaml", [])
    assert (paper.optim.lr, paper.optim.eps, paper.optim.lr_warmup_steps, paper.optim.grad_clip) == (
        5e-5,
        1e-7,
        1000,
        10.0,
    )
    assert (paper.warmup_steps, paper.steps, paper.model.lora_rank) == (3000, 800_000, 8)
    assert paper.loss.regularizers.specialization == 0.05
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        ["data.batch_size=3", "optim.lr=3e-3", "data.mix.snr_db=[-1, 2]", "out_dir=runs/x-1"],
    )
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.data.mix.snr_db, cfg.out_dir) == (3, 0.003, (-1, 2), "runs/x-1")
    with pytest.raises(Exception, match="unknown"):
        load_config(None, ["data.batch_sise=3"])
    assert [lr_at(s, paper.optim) for s in (0, 499, 999, 5000)] == pytest.approx([5e-8, 2.5e-5, 5e-5, 5e-5])


def test_short_run_writes_everything_and_warmup_freezes_backbones(shards, tmp_path):
    cfg = _cfg(shards, tmp_path / "run", steps=2, warmup_steps=2, ckpt_every=0)
    torch.manual_seed(cfg.seed)
    initial = {k: v.clone() for k, v in build_model(cfg.model).state_dict().items()}
    train(cfg)
    warm = load_checkpoint(tmp_path / "run" / "final").state_dict()
    changed = {k for k in initial if not torch.equal(initial[k], warm[k])}
    assert any(k.startswith("image_aligner") for k in changed) and any(k.startswith("audio_aligner") for k in changed)
    assert "log_logit_scale" in changed
    assert not any(k.startswith(("image_encoder", "audio_encoder")) for k in changed), "backbones frozen in warm-up"

    # continue into the full stage: HuBERT and LoRA train, DINO's own weights never; with validation
    train(
        _cfg(
            shards,
            tmp_path / "run",
            steps=4,
            warmup_steps=2,
            ckpt_every=0,
            **{
                "val.every": 2,
                "val.speech": shards.root / "speech",
                "val.sound": shards.root / "sound",
                "val.pairs": 8,
            },
        ),
        resume=True,
        validate=validate,
    )
    full = load_checkpoint(tmp_path / "run" / "final").state_dict()
    changed = {k for k in initial if not torch.equal(warm[k], full[k])}
    assert any(k.startswith("audio_encoder") for k in changed)
    assert any("lora" in k for k in changed)
    assert not any(k.startswith("image_encoder") and "lora" not in k for k in changed)

    out = tmp_path / "run"
    assert (out / "config.yaml").exists() and (out / "model_config.json").exists()
    events = list((out / "train").glob("events.out.tfevents.*"))
    assert events, "TensorBoard logs"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for e in events:
        acc = EventAccumulator(str(e))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"loss/total", "loss/cor", "lr", "temperature", "grad_norm", "items_per_s", "time/data_s"} <= tags
    assert "val/places/total/A->I@10" in tags and "val/audioset/sound_head/I->A@1" in tags
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 4 and summary["bad_steps_total"] == 0
    assert {"cor", "dis", "reg/nonneg", "reg/temperature"} <= set(summary["last_loss"])


def _run(args, **kw):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, **kw)


@pytest.mark.timeout(900)  # two 12-step runs and a resume: 100-230 s on 2 busy cores
def test_kill_and_resume_reproduces_the_uninterrupted_run(shards, tmp_path):
    args = ["train.py", "--config", "configs/tiny.yaml"]
    straight = _run([*args, *_overrides(shards, tmp_path / "straight", steps=12, ckpt_every=4)], timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, *args, *_overrides(shards, killed_dir, steps=12, ckpt_every=4)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while (
        not (killed_dir / "checkpoints" / "step_00000004").exists() and proc.poll() is None and time.time() < deadline
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "final").exists(), "the run must have been killed before it finished"
    resumed = _run([*args, *_overrides(shards, killed_dir, steps=12, ckpt_every=4), "--resume"], timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr

    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(killed_dir / "final" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    sa = json.loads((tmp_path / "straight" / "checkpoints" / "step_00000012" / "trainer_state.json").read_text())
    sb = json.loads((killed_dir / "checkpoints" / "step_00000012" / "trainer_state.json").read_text())
    assert sa["step"] == sb["step"] == 12 and sa["micro_step"] == sb["micro_step"]
    assert len(list((killed_dir / "checkpoints").glob("step_*"))) <= 3, "rotation keeps the newest"


def test_nan_batches_are_skipped_counted_and_stop_the_run(shards, tmp_path, monkeypatch):
    real_iterate = TrainLoader.iterate
    poisoned = {"every": 0}

    def iterate(self, skip=0, device="cpu"):
        for i, batch in enumerate(real_iterate(self, skip, device)):
            if poisoned["every"] and i % poisoned["every"] == 1:
                batch["mix_audio"] = batch["mix_audio"] * float("nan")
                batch["sound_audio"] = batch["sound_audio"] * float("nan")
            yield batch

    monkeypatch.setattr(TrainLoader, "iterate", iterate)
    poisoned["every"] = 3
    train(_cfg(shards, tmp_path / "nan", steps=6, ckpt_every=0, log_with="none"))
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["step"] == 6 and summary["bad_steps_total"] == 2
    assert not (tmp_path / "nan" / "train").exists(), "log_with=none writes no tracker logs"
    final = load_checkpoint(tmp_path / "nan" / "final").state_dict()
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())

    poisoned["every"] = 1
    monkeypatch.setattr(
        TrainLoader,
        "iterate",
        lambda self, skip=0, device="cpu": (
            {**b, "sound_audio": b["sound_audio"] * float("nan")} for b in real_iterate(self, skip, device)
        ),
    )
    with pytest.raises(RuntimeError, match="in a row"):
        train(_cfg(shards, tmp_path / "nan2", steps=6, ckpt_every=0, max_bad_steps=3))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(n, script_args, timeout=600):
    # n CPU processes: accelerate's --cpu starts one process unless MPI is configured, so the
    # processes come from its torchrun launcher (--multi_gpu) with the CPU asked for by the
    # environment (and no GPU visible: ENV)
    cmd = [
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        *script_args,
    ]
    return subprocess.run(
        [sys.executable, *cmd],
        cwd=ROOT,
        env={**ENV, "ACCELERATE_USE_CPU": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["warmup", "full"])
def test_two_processes_give_the_single_process_loss_and_gradients(tmp_path, stage):
    g = torch.Generator().manual_seed(0)
    b, n = 6, 16_000
    batch = {name: torch.randn(b, 3, 112, 112, generator=g) for name in ("sound_image", "speech_image")}
    for name in ("sound_audio", "speech_audio"):
        batch[name] = 0.1 * torch.randn(b, n, generator=g)
    batch["mix_audio"] = batch["sound_audio"] + batch["speech_audio"]
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, n // 2 :] = False
    mask[3, n // 3 :] = False
    batch.update(sound_mask=mask, speech_mask=mask.flip(0), mix_mask=mask | mask.flip(0))
    save_file(batch, str(tmp_path / "batch.safetensors"))

    one = _run(
        ["tests/support/dist_step.py", str(tmp_path / "batch.safetensors"), str(tmp_path / "one.safetensors"), stage],
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = _launch(
        2, ["tests/support/dist_step.py", str(tmp_path / "batch.safetensors"), str(tmp_path / "two.safetensors"), stage]
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, c = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    assert (int(a.pop("processes")), int(c.pop("processes"))) == (1, 2)
    assert set(a) == set(c)
    assert int(a["items"]) == int(c["items"]) == b
    assert any(k.startswith("grad/audio_encoder") for k in a) == (stage == "full")
    for name in a:
        torch.testing.assert_close(a[name], c[name], rtol=1e-4, atol=1e-6, msg=name)


def _ddp_wraps(output: str) -> list[tuple[str, str]]:
    """(stage, find_unused_parameters) of each DDP wrapper a run built, in order."""
    import re

    return re.findall(
        r"(\w+) stage: DDP over its \d+ trainable parameter tensors \(find_unused_parameters=(\w+)\)", output
    )


@pytest.mark.slow
def test_two_processes_train_through_the_stage_switch_and_resume_after_it_exactly(shards, tmp_path):
    import shutil

    args = ["train.py", "--config", "configs/tiny.yaml"]
    # finite epoch: ranks may get batches of unequal size, which the padded gather must absorb
    overrides = _overrides(
        shards, tmp_path / "straight", steps=4, warmup_steps=2, ckpt_every=3, **{"data.resampled": False}
    )
    straight = _launch(2, [*args, *overrides])
    assert straight.returncode == 0, straight.stderr[-3000:]
    # each stage's wrapper holds what the stage trains, and neither searches for unused parameters
    assert _ddp_wraps(straight.stdout) == [("warmup", "False"), ("full", "False")], straight.stdout[-2000:]
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["step"] == 4 and summary["bad_steps_total"] == 0

    # the run as it stood at its step-3 checkpoint, after the warm-up, resumed: only the full
    # stage's wrapper is built, and the run ends where the uninterrupted one did
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "step_00000003", resumed / "checkpoints" / "step_00000003")
    again = _launch(2, [*args, *overrides, f"out_dir={resumed}", "--resume"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and _ddp_wraps(again.stdout) == [("full", "False")], again.stdout[-2000:]
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(resumed / "final" / "model.safetensors"))
    assert [name for name in a if not torch.equal(a[name], b[name])] == [], "resume must be bit-identical"


def _speech_with(shards, tmp_path, edit):
    """A copy of the speech shards with every member rewritten by ``edit(name, data)``."""
    import shutil

    from pipeline.data.sources import list_shards

    speech = tmp_path / "speech"
    shutil.copytree(shards.root / "speech", speech)
    for shard in list_shards(str(speech)):
        shardgen.rewrite_tar(shard.path, edit)
    return speech


def test_no_valid_speech_stops_train_py_with_one_line(shards, tmp_path):
    speech = _speech_with(
        shards, tmp_path, lambda name, data: shardgen.with_duration(data, 0) if name.endswith(".json") else data
    )
    result = _run(
        [
            "train.py",
            "--config",
            "configs/tiny.yaml",
            *_overrides(shards, tmp_path / "run", **{"data.speech": speech, "data.num_workers": 2}),
        ],
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the speech stream yields no usable sample") and str(speech) in last
    assert "json duration is not a positive number" in last


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.speech=pipe:touch X", "the pipe: scheme is not accepted"),
        ("data.batch_sise=3", r"unknown config.data keys \['batch_sise'\]"),
        ("data.sound=.", "no committed shards in '.'"),
    ],
)
def test_train_py_refuses_bad_input_with_one_line(shards, tmp_path, override, message):
    import re

    result = _run(
        ["train.py", "--config", "configs/tiny.yaml", *_overrides(shards, tmp_path / "run"), override], timeout=120
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(message, last), last
    assert not (ROOT / "X").exists()


def _scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted((run_dir / "train").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        values += [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []
    return sorted(values)


@pytest.mark.slow
def test_resume_is_exact_and_skips_are_counted_over_the_run_with_invalid_samples(shards, tmp_path):
    firsts = {f"{key}.flac" for key in shards.speech_keys[::6]}  # one undecodable clip per speech shard
    speech = _speech_with(shards, tmp_path, lambda name, data: b"not a flac file" if name in firsts else data)
    args = ["train.py", "--config", "configs/tiny.yaml"]
    common = {"data.speech": speech, "data.num_workers": 2, "ckpt_every": 10}
    straight = _run([*args, *_overrides(shards, tmp_path / "straight", steps=20, **common)], timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    part = _run([*args, *_overrides(shards, tmp_path / "resumed", steps=10, **common)], timeout=600)
    assert part.returncode == 0, part.stderr[-2000:]
    resumed = _run([*args, *_overrides(shards, tmp_path / "resumed", steps=20, **common), "--resume"], timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "final" / "model.safetensors"))
    assert [name for name in a if not torch.equal(a[name], b[name])] == [], "resume must be bit-identical"
    skipped = json.loads((tmp_path / "straight" / "summary.json").read_text())["skipped_samples"]
    assert skipped and all(reason.startswith("speech: undecodable") for reason in skipped)
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["skipped_samples"] == skipped
    logged = _scalars(tmp_path / "resumed", "data/skipped_samples")
    assert [s for s, _ in logged] == list(range(2, 21, 2))
    assert all(x <= y for (_, x), (_, y) in zip(logged, logged[1:])), "the count is over the whole run"
    assert logged[-1][1] == sum(skipped.values()) and logged == _scalars(tmp_path / "straight", "data/skipped_samples")


def test_resume_with_another_model_or_optimizer_config_stops_with_one_line(shards, tmp_path):
    from typer.testing import CliRunner

    from train import app

    out = tmp_path / "run"
    base = {"steps": 1, "warmup_steps": 0, "ckpt_every": 0, "log_with": "none", "data.num_workers": 0}
    train(_cfg(shards, out, **base))
    ckpt, config = out / "checkpoints" / "step_00000001", (out / "config.yaml").read_text()

    def resume(**changed):
        args = ["--config", str(ROOT / "configs" / "tiny.yaml"), *_overrides(shards, out, **{**base, **changed})]
        result = CliRunner().invoke(app, [*args, "steps=2", "--resume"])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output + repr(result.exception)
        return result.output.strip().splitlines()[-1]

    use = f"resume with its config (--config {out / 'config.yaml'}) or with"
    new_run = "(another out_dir, no --resume)"
    # the architecture: every field that differs, both values, the overrides that match
    assert resume(**{"model.code_dim": 16, "model.lora_rank": 2}) == (
        f"error: --resume: {ckpt} was trained with model.code_dim=32, this run sets 16; model.lora_rank=8, this run "
        f"sets 2; a resumed run keeps its checkpoint's model: {use} model.code_dim=32 model.lora_rank=8, or train "
        f"this model as a new run {new_run}"
    )
    # heads in another order have the same shapes (they loaded and swapped what each head learned):
    # init_from matches them by audio type
    assert resume(**{"model.head_types": "[speech,sound]"}) == (
        f"error: --resume: {ckpt} was trained with model.head_types=[sound,speech], this run sets [speech,sound]; a "
        f"resumed run keeps its checkpoint's model: {use} model.head_types=[sound,speech], or start a new run from "
        f"its weights with init_from={ckpt} {new_run}"
    )
    # other trained parameters: torch's optimizer refused the saved state with a traceback
    assert resume(freeze="[image]") == (
        f"error: --resume: {ckpt}'s optimizer holds 105 parameter tensors, this run trains 93 (freeze=[image]): its "
        f"run froze other backbones; a resumed run keeps its optimizer: {use} the freeze its run set, or start a new "
        f"run from its weights with init_from={ckpt} {new_run}"
    )
    # Adam's saved groups restored these over the config's, without a word
    settings = {"optim.betas": "[0.8,0.99]", "optim.eps": 1e-6, "optim.weight_decay": 0.01}
    assert resume(**settings) == (
        f"error: --resume: {ckpt} was trained with optim.betas=[0.9,0.999], this run sets [0.8,0.99]; optim.eps=1e-07, "
        "this run sets 1e-06; optim.weight_decay=0, this run sets 0.01; a resumed run keeps its optimizer's settings: "
        "resume with optim.betas=[0.9,0.999] optim.eps=1e-07 optim.weight_decay=0, or start a new run from its weights "
        f"with init_from={ckpt} optim.betas=[0.8,0.99] optim.eps=1e-06 optim.weight_decay=0.01 {new_run}"
    )
    # weights that do not fit although the configs agree: the first tensors that do not
    weights = ckpt / "model" / "model.safetensors"
    state = load_file(str(weights))
    state["renamed.log_logit_scale"] = state.pop("log_logit_scale")
    save_file(state, str(weights))
    assert resume() == (
        f"error: --resume: {weights} does not fit this run's model although its config.json describes the same "
        "architecture (1 missing: log_logit_scale; 1 unexpected: renamed.log_logit_scale); it was written with "
        "another version of this code or of transformers/peft: resume with the versions that wrote it, or train a "
        f"new run {new_run}"
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [ckpt.name]
    assert (out / "config.yaml").read_text() == config, "a refused resume leaves the run as it was"


def test_loader_workers_exit_when_the_trainer_is_killed(shards, tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "train.py",
            "--config",
            "configs/tiny.yaml",
            *_overrides(shards, tmp_path / "run", steps=10_000, ckpt_every=0, **{"data.num_workers": 2}),
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers = procs.wait_for_children(proc, 2)
    assert len(workers) >= 2, "the loader workers did not start"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not procs.survivors(workers, timeout=30), "loader workers outlived the killed trainer"
