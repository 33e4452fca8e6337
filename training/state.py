"""What a run saves and loads: checkpoints (model, optimizer, trainer and loader state, RNG per
process) with their rotation, and the audio backbone a run may start from.

    checkpoints/step_N/  model/  optimizer.pt  trainer_state.json  rng_R.safetensors  loader_R.json

A checkpoint is written into ``step_N.tmp`` and renamed when complete, its files fsynced first
(``pipeline.atomic.replace_dir``), so a kill or a power loss never leaves a half checkpoint that
``--resume`` would pick up.

``--resume`` continues the checkpoint's run, so what the checkpoint fixes must be the run's config:
the model (its architecture, ``model.transfer.ARCHITECTURE``, the audio type of each head and the
parameters the optimizer holds) and the optimizer's parameter groups and settings (Adam's saved
state restores ``betas``, ``eps``, ``weight_decay`` and ``lr_scale`` over the config's). Any
difference stops the run before a step, with one ``ConfigError`` line naming the checkpoint, each
field with its saved and its new value, and what to do.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.checkpoint import (
    WEIGHTS_FILE,
    CheckpointError,
    frozen_config,
    misfit,
    read_checkpoint_info,
    save_checkpoint,
    state_shapes,
)
from model.config import head_types_of
from model.transfer import architecture_differences
from pipeline.atomic import replace_dir, write_json
from training.config import ConfigError

# ModelConfig fields a resumed run shares with its checkpoint besides the architecture that
# model.transfer.architecture_differences compares: the audio type each head answers (a reordering
# loads without a shape error and would swap what the heads learned), and the fields that decide
# which parameters the optimizer holds (its saved state is per parameter)
RESUME_FIELDS = ("head_types", "audio_spec_augment", "freeze_feature_encoder")
# Adam's settings that its saved parameter groups restore over the config's (lr is set every step)
OPTIM_SETTINGS = ("betas", "eps", "weight_decay")
NEW_RUN = "(another out_dir, no --resume)"


def checkpoint_dirs(out: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    return sorted((out / "checkpoints").glob("step_*[0-9]"), key=lambda p: int(p.name.split("_")[1]))


def save_training_state(
    out: Path, step: int, state: dict, loader_state: dict, model, optimizer, accelerator: Accelerator, keep: int
):
    """checkpoints/step_N/, then only the newest ``keep`` checkpoints are kept."""
    final = out / "checkpoints" / f"step_{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / f"rng_{rank}.safetensors"))
    write_json(tmp / f"loader_{rank}.json", loader_state, indent=None)
    if accelerator.is_main_process:
        save_checkpoint(model, tmp / "model")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        write_json(tmp / "trainer_state.json", {**state, "step": step}, indent=2)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir(tmp, final)  # every file fsynced, then one rename
        for old in checkpoint_dirs(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_training_state(ckpt: Path, model, optimizer, accelerator: Accelerator) -> tuple[dict, dict | None]:
    """Restore model, optimizer and this process's RNG; returns the trainer state and this
    process's loader state (None for a checkpoint written without one). A checkpoint that is not
    this run's (``_check_model``, ``_check_weights``, ``_check_optimizer``) is one ``ConfigError``
    line before anything is loaded into the model or the optimizer."""
    # Not model.loading.load_any: resume restores weights into the model being trained (built from
    # the run's config) together with its optimizer, not a new model.
    model = accelerator.unwrap_model(model)
    _check_model(ckpt, model)
    weights = ckpt / "model" / WEIGHTS_FILE
    try:
        state_dict = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"--resume: {weights} is not a readable safetensors file ({exc})", "out_dir") from None
    _check_weights(weights, model, state_dict)
    saved = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    _check_optimizer(ckpt, saved["param_groups"], optimizer.param_groups, model)
    model.load_state_dict(state_dict, strict=False)
    optimizer.load_state_dict(saved)
    rank = accelerator.process_index
    if (rng_file := ckpt / f"rng_{rank}.safetensors").exists():
        rng = load_file(str(rng_file))
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    loader_file = ckpt / f"loader_{rank}.json"
    loader_state = json.loads(loader_file.read_text()) if loader_file.exists() else None
    return json.loads((ckpt / "trainer_state.json").read_text()), loader_state


def _check_model(ckpt: Path, model) -> None:
    """The run's model config must be the one the checkpoint's ``model/config.json`` records, field
    by field: the architecture (as ``init_from`` compares it) and ``RESUME_FIELDS``."""
    try:
        saved = read_checkpoint_info(ckpt / "model")["model"]
    except CheckpointError as exc:
        raise ConfigError(f"--resume: {' '.join(str(exc).split())}", "out_dir") from None
    mine = frozen_config(model).to_dict()
    fixed = [(f"model.{name}", then, now) for name, now, then in architecture_differences(mine, saved)]
    # (a field a checkpoint predates is taken as the run's)
    other = [(f"model.{name}", saved.get(name, mine[name]), mine[name]) for name in RESUME_FIELDS]
    other = [diff for diff in other if diff[1] != diff[2]]
    diffs = fixed + other
    if not diffs:
        return
    overrides = [f"{key}={_value(then)}" for key, then, _ in diffs]
    if model.config.pretrained and any("_backbone." in key for key, _, _ in diffs):
        # the backbones' architecture then comes from the hub ids; the resumed weights replace theirs anyway
        overrides.insert(0, "model.pretrained=false")
    types, theirs = head_types_of(model.config), saved.get("head_types") or head_types_of(model.config)
    if not fixed and (len(theirs) == 1 or set(types) <= set(theirs)):
        # init_from maps the checkpoint's heads onto the run's by audio type, and builds a new optimizer
        instead = f"start a new run from its weights with init_from={ckpt} {NEW_RUN}"
    else:
        instead = f"train this model as a new run {NEW_RUN}"
    raise ConfigError(
        f"--resume: {ckpt} was trained with {_shown(diffs)}; a resumed run keeps its checkpoint's model: resume "
        f"with {_with_config(ckpt, ' '.join(overrides))}, or {instead}",
        diffs[0][0],
    )


def _check_weights(weights: Path, model, state_dict: dict) -> None:
    """The weights must fit the model their config describes; one line naming the first tensors that
    do not (weights written by another version of the code or of transformers/peft)."""
    own = state_shapes(model.state_dict())
    # a BatchNorm's step counter is not a weight: checkpoints may lack it
    own = {k: v for k, v in own.items() if k in state_dict or not k.endswith("num_batches_tracked")}
    problem = misfit(own, state_shapes(state_dict), "this run's model")
    if problem:
        raise ConfigError(
            f"--resume: {weights} does not fit this run's model although its config.json describes the same "
            f"architecture ({problem}); it was written with another version of this code or of transformers/peft: "
            f"resume with the versions that wrote it, or train a new run {NEW_RUN}",
            "out_dir",
        )


def _check_optimizer(ckpt: Path, saved: list[dict], built: list[dict], model) -> None:
    """The optimizer's parameter groups and settings must be the checkpoint's. ``optim.backbone_lr_scale``
    makes one group (1) or two (aligners and temperature; backbones with their ``lr_scale``):
    loading refuses another number of groups, and over the same number would restore the saved
    ``lr_scale`` in place of the config's. ``OPTIM_SETTINGS`` would be restored from the saved
    groups too. Either way the run would not be the one configured, without a word. Last, the
    groups must hold as many parameters as the run trains (``freeze``), which torch's loading
    refuses with a traceback."""
    diffs = []
    if [g.get("lr_scale") for g in saved] != [g.get("lr_scale") for g in built]:
        then, now = (float(groups[-1].get("lr_scale", 1.0)) for groups in (saved, built))
        diffs.append(("optim.backbone_lr_scale", then, now))
    for name in OPTIM_SETTINGS:
        then, now = (_setting(groups[0].get(name)) for groups in (saved, built))
        if then != now:
            diffs.append((f"optim.{name}", then, now))
    if diffs:
        kept = "parameter groups" if [key for key, _, _ in diffs] == ["optim.backbone_lr_scale"] else "settings"
        then = " ".join(f"{key}={_value(a)}" for key, a, _ in diffs)
        now = " ".join(f"{key}={_value(b)}" for key, _, b in diffs)
        raise ConfigError(
            f"--resume: {ckpt} was trained with {_shown(diffs)}; a resumed run keeps its optimizer's {kept}: "
            f"resume with {then}, or start a new run from its weights with init_from={ckpt} {now} {NEW_RUN}",
            diffs[0][0],
        )
    held, trains = (sum(len(g["params"]) for g in groups) for groups in (saved, built))
    if held != trains:  # what the model fields decide matched (_check_model): the frozen parts differ
        raise ConfigError(
            f"--resume: {ckpt}'s optimizer holds {held} parameter tensors, this run trains {trains} "
            f"(freeze={_value(sorted(model.frozen))}): its run froze other backbones; a resumed run keeps its "
            f"optimizer: resume with {_with_config(ckpt, 'the freeze its run set')}, or start a new run from its "
            f"weights with init_from={ckpt} {NEW_RUN}",
            "freeze",
        )


def _shown(diffs: list[tuple]) -> str:
    """``key=saved, this run sets new`` for the first few differences."""
    shown = "; ".join(f"{key}={_value(then)}, this run sets {_value(now)}" for key, then, now in diffs[:4])
    return shown + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")


def _with_config(ckpt: Path, fallback: str) -> str:
    """The checkpoint's run config, where the run directory still holds it (written at the run's
    start, rewritten only by a run that started), else ``fallback``."""
    config = ckpt.parent.parent / "config.yaml"
    return f"its config (--config {config}) or with {fallback}" if config.is_file() else fallback


def _setting(value):
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else value


def _value(value) -> str:
    """A value as an override writes it (one shell word): numbers as %g, lists in YAML flow style."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def load_audio_backbone(model, path: str) -> None:
    """Start the audio backbone from saved HuBERT weights (the architecture must match)."""
    weights = load_file(path)
    weights.pop("masked_spec_embed", None)  # only exists when SpecAugment is on
    try:
        missing, unexpected = model.audio_encoder.backbone.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"{path} does not match the audio backbone: {str(exc)[:300]}") from None
    missing = [k for k in missing if k != "masked_spec_embed"]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the audio backbone (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
