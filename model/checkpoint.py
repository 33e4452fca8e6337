"""Checkpoints: a directory with ``model.safetensors`` (weights) and ``config.json``.

``config.json`` holds the ``ModelConfig`` with the *actual* backbone configs written in and
``pretrained`` set to false, so loading rebuilds the exact architecture from configs and never
downloads; it also holds the training stage and any JSON metadata the caller passes. Nothing is
unpickled on load. Whatever is wrong with a checkpoint on load (a missing, truncated or empty
file, a config that is not JSON or has fields this code does not know, weights that do not fit,
weights of the wrong type or holding NaN or infinity) is a ``CheckpointError`` naming the file
(and the first bad weight), how it is written, and what to do. ``check_finite`` refuses a model's
outputs that are not finite numbers (``NonFiniteOutput``), for the commands that write them. The
key and shape check (``misfit``) and the weight check (``weight_problems``) serve the baselines'
release files too (``model.baselines.convert``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline import atomic
from pipeline.atomic import dumps_strict, strict_json

from .config import ModelConfig
from .factory import build_model
from .network import AVModel

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "seeing-speech-and-sound/model"
VERSION = 1
DOC_FIELDS = ("format", "version", "model", "stage", "meta")  # the keys of config.json


class CheckpointError(ValueError):
    """A checkpoint file cannot be loaded; the message names it and says how it was written."""

    def __init__(self, path: Path, problem: str):
        super().__init__(
            f"checkpoint file {path} {problem}; it was written by train.py / "
            "model.checkpoint.save_checkpoint: re-export it"
        )
        self.path = path


class MissingCheckpointFile(CheckpointError, FileNotFoundError):
    """A checkpoint directory lacks one of its two files."""


class BadWeights(CheckpointError):
    """Weights that load but cannot be used: NaN or infinite values, or integer tensors where the
    model has floating-point ones (a quantized copy). Re-exporting would not help, so the message
    says what does."""

    def __init__(self, path: Path, key: str, problem: str, count: int):
        others = f" (and {count - 1} more tensors)" if count > 1 else ""
        ValueError.__init__(
            self,
            f"weights file {path}: {key} {problem}{others}; these weights cannot be used "
            "(a training run that diverged, or a damaged or converted copy): use an earlier "
            "checkpoint or the original file",
        )
        self.path, self.key = path, key


class NonFiniteOutput(CheckpointError):
    """A model whose features are NaN or infinite although its weights are finite (they overflow)."""

    def __init__(self, what: str):
        ValueError.__init__(
            self,
            f"the model's {what} are NaN or infinite (finite weights that overflow); nothing "
            "was written: check or retrain the checkpoint",
        )


def check_finite(features: torch.Tensor, what: str) -> torch.Tensor:
    """``features``, or ``NonFiniteOutput`` when any value is NaN or infinite (one device sync)."""
    if not bool(torch.isfinite(features).all()):
        raise NonFiniteOutput(what)
    return features


def weight_problems(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor] | None = None
) -> list[tuple[str, str]]:
    """(key, problem) for every tensor of ``state`` that cannot be used, in the file's order: not
    floating point where ``expected`` (or, without it, any weight) is, another integer type than
    ``expected``'s, or holding NaN or infinity. One pass of ``torch.isfinite`` per tensor."""
    problems = []
    for key, tensor in state.items():
        want = expected.get(key) if expected is not None else None
        floating = want.is_floating_point() if want is not None else True
        if floating and not tensor.is_floating_point():
            problems.append((key, f"is {str(tensor.dtype).removeprefix('torch.')}, not floating point"))
        elif not floating and tensor.dtype != want.dtype:
            problems.append(
                (
                    key,
                    f"is {str(tensor.dtype).removeprefix('torch.')}, the model holds "
                    f"{str(want.dtype).removeprefix('torch.')}",
                )
            )
        elif floating and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            problems.append((key, f"holds {bad} NaN or infinite values of {tensor.numel()}"))
    return problems


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
    text = dumps_strict(strict_json(doc), indent=2)  # fails before anything is written if meta is not JSON
    # config.json is the checkpoint's commit marker, as a shard's _stats.json is: both files are
    # written under temporary names first, then the old config goes, the weights are renamed into
    # place and the config comes last, each step fsynced (pipeline.atomic). A reader never finds new
    # weights beside an old config: a crash in between leaves weights without a config, which
    # loads as "no checkpoint config there" and is rewritten by the next save.
    weights, config = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    tmp_weights, tmp_config = atomic.temp_path(weights), atomic.temp_path(config)
    try:
        save_file(state, str(tmp_weights), metadata={"format": FORMAT})
        tmp_config.write_text(text, encoding="utf-8")
        atomic.remove(config)
        atomic.replace(tmp_weights, weights)
        atomic.replace(tmp_config, config)
    finally:
        atomic.discard(tmp_weights)
        atomic.discard(tmp_config)
    return directory


def read_checkpoint_info(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint: ``model`` (config dict), ``stage``, ``meta``."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise MissingCheckpointFile(path, "does not exist (no checkpoint config there)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"is not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(path, f"is not a model checkpoint (format {found!r}, expected {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise CheckpointError(path, f"has checkpoint version {doc.get('version')}, this code reads {VERSION}")
    unknown = sorted(set(doc) - set(DOC_FIELDS))
    if unknown or not isinstance(doc.get("model"), dict):
        problem = f"unknown fields {unknown}" if unknown else "no 'model' section"
        raise CheckpointError(path, f"has {problem} (expected {list(DOC_FIELDS)})")
    return doc


def _model_from_config(info: dict[str, Any], config_path: Path) -> AVModel:
    """The model ``config.json`` describes, in its saved stage."""
    try:
        model = build_model(ModelConfig.from_dict(info["model"]))
        model.set_stage(info.get("stage", "full"))
    except (ValueError, TypeError) as exc:  # unknown or ill-typed fields, an unknown stage
        raise CheckpointError(config_path, f"does not describe a model this code builds ({exc})") from exc
    return model


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MissingCheckpointFile(path, "does not exist (no checkpoint weights there)")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:  # empty, truncated or not safetensors at all
        raise CheckpointError(path, f"is not a readable safetensors file ({exc}; {path.stat().st_size} bytes)") from exc


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu") -> AVModel:
    """Rebuild the model of a checkpoint and load its weights; returned in eval mode, in the
    stage it was saved in."""
    info = read_checkpoint_info(directory)
    weights = Path(directory) / WEIGHTS_FILE
    state = _read_weights(weights)
    model = _model_from_config(info, Path(directory) / CONFIG_FILE)
    expected = model.state_dict()
    problem = misfit(state_shapes(expected), state_shapes(state))
    if problem:
        raise CheckpointError(weights, f"does not fit its {CONFIG_FILE} ({problem})")
    bad = weight_problems(state, expected)
    if bad:
        raise BadWeights(weights, *bad[0], len(bad))
    model.load_state_dict(state)
    return model.to(device).eval()


def state_shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in state.items()}


def misfit(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], against: str = "config") -> str:
    """What keeps weights of shapes ``found`` (by key) from loading into a model whose state has the
    shapes ``expected``, on one line ("" if nothing): missing and unexpected tensors, tensors of
    another shape (file vs ``against``; the first few of each). Shapes only, so a file read lazily
    (``model.baselines.convert``) is checked before any tensor is read."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    other = [f"{k} {found[k]} vs {v}" for k, v in expected.items() if k in found and found[k] != v]
    parts = [
        f"{len(items)} {what}: {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}"
        for what, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            (f"of another shape (file vs {against})", other),
        )
        if items
    ]
    return "; ".join(parts)
