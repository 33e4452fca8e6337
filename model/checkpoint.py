"""Checkpoints: a directory with ``model.safetensors`` (weights) and ``config.json``.

``config.json`` holds the ``ModelConfig`` with the *actual* backbone configs written in and
``pretrained`` set to false, so loading rebuilds the exact architecture from configs and never
downloads; it also holds the training stage and any JSON metadata the caller passes. Nothing is
unpickled on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .factory import build_model
from .network import AVModel

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "seeing-speech-and-sound/model"
VERSION = 1


def _backbone_config(module: torch.nn.Module) -> dict[str, Any]:
    """The transformers config as plain constructor arguments (bookkeeping keys dropped)."""
    data = json.loads(module.config.to_json_string(use_diff=False))
    for key in ("transformers_version", "architectures", "_name_or_path", "model_type", "dtype", "torch_dtype"):
        data.pop(key, None)
    return data


def frozen_config(model: AVModel) -> ModelConfig:
    """``model.config`` with the backbones' exact configs recorded and ``pretrained`` off."""
    data = model.config.to_dict()
    data["pretrained"] = False
    data["image_backbone"] = _backbone_config(model.image_encoder.backbone)
    data["audio_backbone"] = _backbone_config(model.audio_encoder.backbone)
    return ModelConfig.from_dict(data)


def save_checkpoint(model: AVModel, directory: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``directory`` (created if needed); ``meta`` must be JSON-serializable."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "model": frozen_config(model).to_dict(),
        "stage": model.stage,
        "meta": meta or {},
    }
    text = json.dumps(doc, indent=2, sort_keys=True)  # fails before anything is written if meta is not JSON
    # Write to temporary names, then rename: a crash never leaves a half-written checkpoint behind
    # under the final names.
    tmp_weights, tmp_config = directory / (WEIGHTS_FILE + ".tmp"), directory / (CONFIG_FILE + ".tmp")
    save_file(state, str(tmp_weights), metadata={"format": FORMAT})
    tmp_config.write_text(text)
    os.replace(tmp_weights, directory / WEIGHTS_FILE)
    os.replace(tmp_config, directory / CONFIG_FILE)
    return directory


def read_checkpoint_info(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint: ``model`` (config dict), ``stage``, ``meta``."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint config at {path}")
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a model checkpoint (format {doc.get('format')!r})")
    if doc.get("version") != VERSION:
        raise ValueError(f"{path} has checkpoint version {doc.get('version')}, this code reads {VERSION}")
    return doc


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu") -> AVModel:
    """Rebuild the model of a checkpoint and load its weights; returned in eval mode, in the
    stage it was saved in."""
    info = read_checkpoint_info(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no checkpoint weights at {weights}")
    model = build_model(ModelConfig.from_dict(info["model"]))
    state = load_file(str(weights), device="cpu")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"checkpoint {directory} does not fit its config: {err}") from err
    if missing or unexpected:
        raise ValueError(f"checkpoint {directory} does not fit its config: missing {missing}, unexpected {unexpected}")
    model.set_stage(info.get("stage", "full"))
    return model.to(device).eval()
