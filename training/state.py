"""What a run saves and loads: checkpoints (model, optimizer, trainer and loader state, RNG per
process) with their rotation, and the audio backbone a run may start from.

    checkpoints/step_N/  model/  optimizer.pt  trainer_state.json  rng_R.safetensors  loader_R.json

A checkpoint is written into ``step_N.tmp`` and renamed when complete, its files fsynced first
(``pipeline.atomic.replace_dir``), so a kill or a power loss never leaves a half checkpoint that
``--resume`` would pick up.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from model.checkpoint import save_checkpoint
from pipeline.atomic import replace_dir, write_json
from training.config import ConfigError


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
    process's loader state (None for a checkpoint written without one)."""
    # Not model.loading.load_any: resume restores weights into the model being trained (built from
    # the run's config, possibly wrapped by Accelerate) together with its optimizer, not a new model.
    state_dict = load_file(str(ckpt / "model" / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise RuntimeError(
            f"{ckpt}: checkpoint does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    saved = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    _check_param_groups(ckpt, saved["param_groups"], optimizer.param_groups)
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


def _check_param_groups(ckpt: Path, saved: list[dict], built: list[dict]) -> None:
    """The optimizer's parameter groups must be the checkpoint's: ``optim.backbone_lr_scale`` makes
    one group (1) or two (aligners and temperature; backbones with their ``lr_scale``). Loading
    refuses another number of groups, and over the same number would restore the saved
    ``lr_scale`` in place of the config's; either way the run would not be the one configured."""
    if [g.get("lr_scale") for g in saved] == [g.get("lr_scale") for g in built]:
        return
    then, now = (f"{float(groups[-1].get('lr_scale', 1.0)):g}" for groups in (saved, built))
    raise ConfigError(
        f"--resume: {ckpt} was trained with optim.backbone_lr_scale={then}, this run sets {now}; a resumed run "
        f"keeps its optimizer's parameter groups: resume with optim.backbone_lr_scale={then}, or start a new run "
        f"from its weights with init_from={ckpt} optim.backbone_lr_scale={now} (another out_dir, no --resume)",
        "optim.backbone_lr_scale",
    )


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
