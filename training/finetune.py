"""Fine-tuning: a run that starts from a trained model's weights (``init_from``) instead of its seeded
init, and the optimizer groups of ``optim.backbone_lr_scale``.

``start_from(model, cfg)`` loads, once, into the freshly built model (after the seeded init, before
the optimizer and step 0):

* this project's checkpoint: a run's ``final/``, its ``checkpoints/step_N/`` (the model inside the
  training state), a ``model.safetensors`` with its ``config.json`` beside it, or a Hub repo id;
* a DenseAV checkpoint (``.ckpt``, ``model.safetensors`` or its Hugging Face folder or repo id), read
  by ``model.denseav_convert``.

Both go through ``model.loading.load_any``, the one loader, so they are checked as evaluation checks
them; ``model.transfer`` puts the weights onto ``AVModel`` (DenseAV's mapped to its module names,
heads matched by the audio type they answer: the checkpoint's sound head becomes the run's
``sound_head`` and its speech head the run's ``speech_head``). The run's architecture must be the
checkpoint's (``model.transfer.ARCHITECTURE``): a difference is one ``ConfigError`` naming the
checkpoint, the fields and the overrides that would match; whatever else keeps the weights off the
model (a ``TransferError``) is one ``ConfigError`` naming the checkpoint. DenseAV's files record no
head types: the speech head is ``init_speech_head`` when given, else load_any's detection from the
model's activations on probe clips (three eSpeak NG sentences against a noise burst, a chirp and a
hum, each scored with a smooth random image, as Pred.Dis assigns heads).

What the run started from is recorded in ``<out_dir>/init_from.json`` (path, kind, sha256 of the
weights file, the Hub commit, the head mapping), copied into ``summary.json`` and the final model's
``config.json`` meta; ``--resume`` never loads ``init_from`` again (the run has its own weights).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import CONFIG_FILE, FORMAT, WEIGHTS_FILE, frozen_config
from model.config import head_types_of
from model.denseav_convert import HeadCountUnknown
from model.loading import Loaded, load_any
from model.network import AVModel
from model.transfer import TransferError, architecture, architecture_differences, transfer_weights
from pipeline.atomic import write_json
from pipeline.tts import TTSError
from training.config import ConfigError, OptimConfig, TrainConfig

RECORD_FILE = "init_from.json"


# --------------------------------------------------------------------------- the run's side


def start_from(model: AVModel, cfg: TrainConfig, main: bool = True) -> dict[str, Any]:
    """Load ``cfg.init_from`` into ``model`` (built from ``cfg.model``, seeded); returns the record of
    what was loaded (the sha256 of the weights on the ``main`` process only). ``ConfigError`` (one
    line) for anything that keeps the checkpoint from being this run's start."""
    spec = cfg.init_from
    local = _local_checkpoint(Path(spec))
    try:
        loaded = _load(local if local.exists() else spec, cfg.init_speech_head, model.config.num_heads)
    except TTSError as exc:
        raise ConfigError(
            f"init_from {spec}: DenseAV's files do not record which head is speech, and telling it from the "
            f"model's activations needs eSpeak NG speech, which failed ({exc}); set init_speech_head=0 or 1",
            "init_from",
        ) from None
    except (ValueError, OSError) as exc:  # CheckpointError, HubError, DenseAVFormatError: one line each
        raise ConfigError(f"init_from {spec}: {' '.join(str(exc).split())}", "init_from") from None
    source, desc = loaded.model, loaded.description
    kind = desc.get("kind")
    if kind == "project" and cfg.init_speech_head is not None:
        raise ConfigError(
            f"init_from {spec} is this project's checkpoint, which records its own heads: drop "
            "init_speech_head, which is for DenseAV's files",
            "init_speech_head",
        )
    if kind not in ("project", "denseav"):
        raise ConfigError(
            f"init_from {spec} is a {kind} release (one similarity head, other encoders), not a model this "
            "trainer fine-tunes: give a run's final/ or checkpoints/step_N/ directory, or a DenseAV checkpoint",
            "init_from",
        )
    hint = _run_config(Path(desc["checkpoint"])) if kind == "project" else None
    try:
        _check_architecture(spec, model, architecture(source), hint, lora=kind == "project")
        mapping = transfer_weights(source, model)
    except TransferError as exc:
        raise ConfigError(f"init_from {spec}: {exc}", "init_from") from None
    record: dict[str, Any] = {
        # "spec", not "path": gradio's client reads any {"path": ...} in ground serve's result as a file to download
        "spec": spec,
        "kind": kind,
        "resolved": desc.get("checkpoint") or desc.get("file"),
        # run head -> checkpoint head, by the audio type each answers
        "heads": {str(k): mapping[k] for k in range(model.config.num_heads)},
        "head_types": head_types_of(model.config),
    }
    if "head_assignment" in desc:
        record["head_assignment"] = desc["head_assignment"]
    if "hub" in desc:
        record["hub"] = desc["hub"]
    if main:
        record["sha256"] = _sha256(_weights_file(Path(record["resolved"])))
    return record


def write_record(out: Path, record: dict | None) -> None:
    """``<out>/init_from.json`` for a run started from a checkpoint; a fresh run without one drops
    a stale record an earlier run left in the same directory."""
    path = Path(out) / RECORD_FILE
    if record is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record, indent=2)


def read_record(out: Path) -> dict | None:
    path = Path(out) / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def param_groups(model: AVModel, trainable: list[torch.nn.Parameter], optim: OptimConfig) -> list[dict]:
    """Adam's parameter groups: one, or with ``optim.backbone_lr_scale`` != 1 the aligners and the
    temperature apart from the backbones (HuBERT, the LoRA adapters), whose group carries
    ``lr_scale`` (the loop sets each group's lr to lr_at(step) x its scale)."""
    if optim.backbone_lr_scale == 1:
        return [{"params": trainable}]  # one group: the optimizer of every run before this option
    backbone = {id(p) for p in (*model.image_encoder.parameters(), *model.audio_encoder.parameters())}
    return [
        {"params": [p for p in trainable if id(p) not in backbone], "lr_scale": 1.0},
        {"params": [p for p in trainable if id(p) in backbone], "lr_scale": optim.backbone_lr_scale},
    ]


# --------------------------------------------------------------------------- loading


def _load(where: Path | str, speech_head: int | None, num_heads: int) -> Loaded:
    try:
        return load_any(where, speech_head=speech_head)
    except HeadCountUnknown:  # a DenseAV file that does not say how many heads it has: the run's model says
        return load_any(where, speech_head=speech_head, num_heads=num_heads)


def _is_project(directory: Path) -> bool:
    try:
        return json.loads((directory / CONFIG_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _local_checkpoint(path: Path) -> Path:
    """A run's ``checkpoints/step_N/`` -> its ``model/``; a project ``model.safetensors`` -> its
    directory (load_any would read a lone ``.safetensors`` as DenseAV's)."""
    if path.is_dir() and not (path / CONFIG_FILE).is_file() and _is_project(path / "model"):
        return path / "model"
    if path.is_file() and path.name == WEIGHTS_FILE and _is_project(path.parent):
        return path.parent
    return path


def _run_config(checkpoint: Path) -> Path | None:
    """The config.yaml of the run that wrote ``checkpoint`` (its ``final/`` or ``checkpoints/step_N/model/``)."""
    if checkpoint.name == "final":
        run = checkpoint.parent
    elif checkpoint.name == "model" and checkpoint.parent.parent.name == "checkpoints":
        run = checkpoint.parent.parent.parent
    else:
        return None
    return run / "config.yaml" if (run / "config.yaml").is_file() else None


def _weights_file(resolved: Path) -> Path:
    return resolved / WEIGHTS_FILE if resolved.is_dir() else resolved


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- architecture


def _check_architecture(spec: str, model: AVModel, need: dict, hint: Path | None, lora: bool) -> None:
    """``ConfigError`` naming every architecture field where the run differs from ``need``, with the
    overrides (or the checkpoint's run config, ``hint``) that would match."""
    found = architecture_differences(frozen_config(model).to_dict(), need, lora=lora)
    diffs = [(f"model.{name}", mine, theirs) for name, mine, theirs in found]
    if not diffs:
        return
    shown = "; ".join(f"{key} is {_value(a)} here, {_value(b)} in the checkpoint" for key, a, b in diffs[:4])
    if len(diffs) > 4:
        shown += f"; and {len(diffs) - 4} more"
    overrides = [f"{key}={_value(b)}" for key, _, b in diffs]
    if model.config.pretrained and any("_backbone." in key for key, _, _ in diffs):
        # the backbones' architecture then comes from the hub ids, not from the dicts above
        overrides.insert(0, "model.pretrained=false")
    use = (
        f"use the checkpoint's model config (--config {hint}, your data and out_dir overrides after it) or "
        if hint
        else ""
    )
    raise ConfigError(
        f"init_from {spec}: this run's model is not the checkpoint's architecture: {shown}; {use}set "
        f"{' '.join(overrides)}",
        "init_from",
    )


def _value(value: Any) -> str:
    """A value as an override writes it (YAML flow style, no spaces: one shell word)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
