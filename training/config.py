"""The training configuration: typed sections, read from YAML plus ``key.sub=value`` overrides.

    model: ModelConfig (a preset, its fields deep-merged over it)   data: LoaderConfig
    optim: OptimConfig   loss: LossWeights   val: ValConfig   and the run's own fields

Unknown keys are refused (a typo must not be silently ignored).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from model.config import ModelConfig
from model.loss import LossWeights
from pipeline.data.config import LoaderConfig


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


@dataclass
class OptimConfig:
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-7
    weight_decay: float = 0.0
    lr_warmup_steps: int = 1000  # linear from 0, then constant
    grad_clip: float = 10.0


@dataclass
class ValConfig:
    every: int = 0  # steps between validations; 0 = off
    speech: str = ""
    sound: str = ""
    pairs: int = 1000


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig.preset("tiny"))
    data: LoaderConfig = field(default_factory=LoaderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    val: ValConfig = field(default_factory=ValConfig)
    steps: int = 800_000
    warmup_steps: int = 3_000  # stage 1: backbones frozen, aligners + temperature on L_cor
    grad_accum: int = 1
    mixed_precision: str = "auto"  # auto = bf16 on GPU, fp32 on CPU; or "no" / "bf16"
    mosaic_prob: float = 0.1  # DenseAV image mixup: a 2x2 mosaic replaces an image with this probability
    audio_init: str = ""  # safetensors of HuBERT backbone weights to start from (e.g. pretrain_audio.py's)
    seed: int = 0
    out_dir: str = "runs/default"
    log_every: int = 10
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    max_bad_steps: int = 5  # NaN/inf losses in a row before the run stops


def load_config(path: Optional[Path], overrides: list[str]) -> TrainConfig:
    """The YAML file (or nothing) with the overrides applied, as a typed ``TrainConfig``."""
    tree = (yaml.safe_load(Path(path).read_text()) if path else None) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        _set_dotted(tree, key, _parse_value(value))
    return _build(TrainConfig, tree)


def config_tree(cfg: TrainConfig) -> dict:
    """``cfg`` as plain data that ``load_config`` reads back to ``cfg`` (the run's config.yaml)."""
    tree = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for name in LoaderConfig.TRAINER_FIELDS:
        del tree["data"][name]
    return tree


def model_from_tree(spec: dict) -> ModelConfig:
    """A ``model:`` block. With ``preset``, the other keys are deep-merged over that preset (a
    backbone dict lists only what it changes); without, it is a whole ModelConfig (config.yaml)."""
    spec = dict(spec)
    try:
        if "preset" in spec:
            spec = _deep_merge(ModelConfig.preset(spec.pop("preset")).to_dict(), spec)
        return ModelConfig.from_dict(spec)
    except (ValueError, TypeError) as exn:
        raise ConfigError(f"model: {exn}") from None


def _deep_merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _deep_merge(merged[key], value) if both_dicts else value
    return merged


def _build(cls, data: dict, where: str = "config"):
    """Nested dicts -> dataclasses, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown {where} keys {unknown}; known: {sorted(known)}")
    if cls is LoaderConfig and (trainer := sorted(set(data) & set(LoaderConfig.TRAINER_FIELDS))):
        raise ConfigError(f"{where} keys {trainer} are set by the trainer (the model's image size, the run's seed)")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if cls is TrainConfig and name == "model":
            value = model_from_tree(value or {})
        elif dataclasses.is_dataclass(sub) and isinstance(value, dict):
            value = _build(sub, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value) if "tuple" in str(f.type) else value
        kwargs[name] = value
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any):
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _parse_value(text: str) -> Any:
    """YAML, plus numbers YAML 1.1 leaves as strings (``3e-3`` needs a dot there)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def flat_scalars(tree: dict, prefix: str = "") -> dict:
    """A nested config as ``a.b.c -> scalar`` (TensorBoard's hyperparameters)."""
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flat_scalars(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            flat[key] = v
        else:
            flat[key] = str(v)
    return flat
