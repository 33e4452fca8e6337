"""The training configuration: typed sections, read from YAML plus ``key.sub=value`` overrides.

    model: ModelConfig (a preset, its fields deep-merged over it)   data: LoaderConfig
    optim: OptimConfig   loss: LossWeights   val: ValConfig   and the run's own fields

The dataclasses are the schema (``model.config``, ``pipeline.data.config``, ``model.loss`` and the
sections below), and each field declares the values it accepts next to it
(``pipeline.fields.checked``). This module is the layer between them and the files, built on
OmegaConf structured configs: every value is converted to its field's type (YAML 1.1 floats such
as ``1e-4`` included), the declarations are checked, and ``OmegaConf.to_object`` hands back the
plain dataclasses, so code that reads ``cfg.x`` gets plain Python values. Unknown keys are refused
(a typo must not be silently ignored). Every problem is one ``ConfigError`` line that names the
key, the value, what is accepted and where the value came from (the file or the override).

A config file may start from another: ``extends: <path, relative to this file>`` reads that file
first (its own ``extends`` too: a chain) and merges this file's keys over it (``OmegaConf.merge``:
mappings key by key at any depth, every other value, lists included, replaced; an empty section
sets nothing, as in one file; ``model: NAME`` replaces the base's whole model block, as the
override ``model=NAME`` does). A missing base or a cycle is one ``ConfigError`` naming the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from model.config import HEAD_FIELDS, PRESETS, ModelConfig
from model.loss import LossWeights
from pipeline.data.config import LoaderConfig
from pipeline.fields import FieldError, check_fields, checked

EXTENDS = "extends"  # a config file's base file (``_read_yaml``)

# what a command without --config is told to pass
CONFIG_FILES = (
    "configs/paper.yaml (the paper's setting), configs/demo.yaml (the demo) or configs/tiny.yaml (smoke runs)"
)


# Accelerate's experiment trackers (accelerate.utils.LoggerType: "all" is every one installed),
# and "none" for no logs
TRACKERS = (
    "tensorboard",
    "wandb",
    "comet_ml",
    "mlflow",
    "aim",
    "clearml",
    "dvclive",
    "swanlab",
    "trackio",
    "all",
    "none",
)


class ConfigError(ValueError):
    """A configuration that cannot be used; one line that names the key (``key``), the value and
    what is accepted."""

    def __init__(self, message: str, key: str = ""):
        super().__init__(message)
        self.key = key


@dataclass
class OptimConfig:
    lr: float = checked(5e-5, gt=0)
    betas: tuple[float, float] = checked((0.9, 0.999), ge=0, lt=1)
    eps: float = checked(1e-7, gt=0)
    weight_decay: float = checked(0.0, ge=0)
    lr_warmup_steps: int = checked(1000, ge=0)  # linear from 0, then constant
    grad_clip: float = checked(10.0, gt=0)  # the largest gradient norm
    # the backbones' (HuBERT's, the LoRA adapters') lr relative to lr: below 1, a fine-tuning run
    # (init_from) moves the pretrained features less than the aligners; 1 keeps one parameter group
    backbone_lr_scale: float = checked(1.0, gt=0)


@dataclass
class ValConfig:
    every: int = checked(0, ge=0)  # steps between validations; 0 = off
    speech: str = ""
    sound: str = ""
    pairs: int = checked(1000, ge=1)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig.preset("tiny"))
    data: LoaderConfig = field(default_factory=LoaderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    val: ValConfig = field(default_factory=ValConfig)
    steps: int = checked(800_000, ge=1)
    warmup_steps: int = checked(3_000, ge=0)  # stage 1: backbones frozen, aligners + temperature on L_cor
    grad_accum: int = checked(1, ge=1)
    # auto = bf16 on GPU, fp32 on CPU; or Accelerate's own names
    mixed_precision: str = checked("auto", choices=("auto", "no", "bf16", "fp16"))
    # DenseAV image mixup: a 2x2 mosaic replaces an image with this probability
    mosaic_prob: float = checked(0.1, ge=0, le=1)
    audio_init: str = ""  # safetensors of HuBERT backbone weights to start from (e.g. pretrain_audio.py's)
    # Fine-tuning (training/finetune.py): the model to start from instead of the seeded init -- a
    # run's final/ or checkpoints/step_N/, a model.safetensors, a DenseAV .ckpt/.safetensors or a Hub
    # repo id; loaded once before step 0 (never over --resume's weights), architecture as the run's
    init_from: str = ""
    # the speech head of init_from's two-head model; null: the checkpoint's own record, or for a DenseAV
    # file (which records none) the head its activations on probe clips pick (eSpeak NG speech vs sounds)
    init_speech_head: Optional[int] = checked(None, ge=0)
    # backbones that stay frozen in the full stage too: "audio" (HuBERT), "image" (the ViT's LoRA
    # adapters); on a small corpus this fine-tunes the aligners without overfitting the backbones
    freeze: list[str] = checked(factory=list, choices=("audio", "image"))
    seed: int = checked(0, ge=0)
    out_dir: str = "runs/default"
    log_every: int = checked(10, ge=1)
    # where the logs go: Accelerate's trackers, one name or a list (training/loop.py checks that
    # each named tracker's package is installed before the model loads)
    log_with: list[str] = checked(factory=lambda: ["tensorboard"], choices=TRACKERS, nonempty=True)
    ckpt_every: int = checked(1000, ge=0)  # 0: the final checkpoint only
    keep_checkpoints: int = checked(3, ge=0)  # 0 keeps every checkpoint (training/state.py)
    max_bad_steps: int = checked(5, ge=1)  # NaN/inf losses in a row before the run stops


def require_config(path: Optional[Path], command: str) -> Path:
    """The ``--config`` of a command: a run never falls back to built-in defaults (the tiny random
    model for 800,000 steps is nobody's run)."""
    if path is None:
        raise ConfigError(
            f"{command} needs --config: {CONFIG_FILES}; overrides such as data.batch_size=16 go after it", "config"
        )
    return path


def load_config(path: Optional[Path], overrides: list[str]) -> TrainConfig:
    """The YAML file (or nothing: the defaults) with the overrides applied, as a typed ``TrainConfig``.

    ``model: NAME`` (or the override ``model=NAME``) is a preset of ``ModelConfig.preset``;
    ``model: {preset: NAME, ...}`` deep-merges the other keys over it. Raises ``ConfigError``."""
    tree, files = _read_yaml(Path(path)) if path else ({}, [])
    origins: dict[str, str] = {}
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(tree, key, value, item)
        origins[key] = item
    try:
        return _build(tree)
    except ConfigError as exn:
        where = _origin(exn.key, origins, files)
        raise ConfigError(f"{exn} ({where})" if where else str(exn), exn.key) from None


def config_tree(cfg: TrainConfig) -> dict:
    """``cfg`` as plain data that ``load_config`` reads back to ``cfg`` (the run's config.yaml)."""
    tree = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for name in LoaderConfig.TRAINER_FIELDS:
        del tree["data"][name]
    return tree


def model_from_tree(spec: Any) -> ModelConfig:
    """A ``model:`` block: a preset name, or a mapping. With ``preset``, the other keys are
    deep-merged over that preset (a backbone dict lists only what it changes); without, the keys
    are ModelConfig fields over its defaults, dicts taken whole (a run's config.yaml)."""
    if isinstance(spec, str):
        spec = {"preset": spec}
    if not isinstance(spec, dict):
        raise ConfigError(
            f"model must be a preset name ({' or '.join(PRESETS)}) or a mapping of ModelConfig fields, got {spec!r}",
            "model",
        )
    spec = dict(spec)
    if "preset" in spec:
        name = spec.pop("preset")
        if name not in PRESETS:
            raise ConfigError(
                f"unknown model preset {name!r} at model.preset; accepted: {', '.join(PRESETS)}", "model.preset"
            )
        base = ModelConfig.preset(name)
        spec = {
            k: _deep_merge(getattr(base, k), v)
            if isinstance(v, dict) and isinstance(getattr(base, k, None), dict)
            else v
            for k, v in spec.items()
        }
    else:
        base = ModelConfig()
    node = OmegaConf.structured(base)
    if any(name in spec for name in HEAD_FIELDS):
        # the base's heads were derived from its own fields: re-derive them from what the block sets
        for name in HEAD_FIELDS:
            node[name] = None
    _apply(node, spec, ModelConfig, "model.")
    _check(node, ModelConfig, "model.")
    try:
        return OmegaConf.to_object(node)
    except ValueError as exn:  # the fields together (heads, temperatures): ModelConfig.__post_init__
        raise ConfigError(f"model: {exn}", "model") from None


def _build(tree: dict) -> TrainConfig:
    _refuse_interpolations(tree, "")
    tree = dict(tree)
    if isinstance(tree.get("log_with"), str):  # log_with: wandb, for a list of one tracker
        tree["log_with"] = [tree["log_with"]]
    spec = tree.pop("model", None)
    model = model_from_tree(spec) if spec is not None else TrainConfig.__dataclass_fields__["model"].default_factory()
    node = OmegaConf.structured(TrainConfig)
    _apply(node, tree, TrainConfig, "")
    _check(node, TrainConfig, "")
    cfg = OmegaConf.to_object(node)
    cfg.model = model
    _check_together(cfg)
    check_stream_types(cfg)
    return cfg


def check_stream_types(cfg: TrainConfig) -> None:
    """Each head answers one of the data's audio types (L_dis, Eq. 9): ``model.head_types`` must
    name the data's streams (``data.streams``, or speech and sound), in any order. A one-head
    model's head answers every type."""
    heads, streams = list(cfg.model.head_types), list(cfg.data.types)
    if cfg.model.num_heads > 1 and sorted(heads) != sorted(streams):
        raise ConfigError(
            f"model.head_types {heads} must name the data's stream types {streams}, one head each: "
            f"set model.head_types to {streams} (in any order), or give data.streams the heads' types",
            "model.head_types",
        )


def _check_together(cfg: TrainConfig) -> None:
    """Fields that are each valid but not together."""
    if cfg.init_from and cfg.audio_init:
        raise ConfigError(
            f"init_from {cfg.init_from} holds the whole model, audio backbone included: drop "
            f"audio_init={cfg.audio_init} (on the command line: 'audio_init=\"\"')",
            "audio_init",
        )
    if cfg.init_speech_head is not None and not cfg.init_from:
        raise ConfigError(
            f"init_speech_head={cfg.init_speech_head} names a head of init_from's model, and init_from is not set",
            "init_speech_head",
        )


def _apply(node, data: Any, cls: type, prefix: str) -> None:
    """Write ``data`` (nested dicts) into the structured node of ``cls``: OmegaConf converts each
    value to its field's type or refuses it."""
    section = prefix[:-1]
    where = f"config.{section}" if section else "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{section or 'a config'} must be a mapping of {cls.__name__} fields, got {data!r}", section)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted((k for k in data if k not in names), key=str)
    if unknown:
        problem = (
            f"unknown ModelConfig fields {unknown} in {where}"
            if cls is ModelConfig
            else f"unknown {where} keys {unknown}"
        )
        close = difflib.get_close_matches(str(unknown[0]), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{problem}{hint}; known: {sorted(names)}", f"{prefix}{unknown[0]}")
    if cls is LoaderConfig and (trainer := sorted(set(data) & set(LoaderConfig.TRAINER_FIELDS))):
        raise ConfigError(
            f"{where} keys {trainer} are set by the trainer (the model's image size, the run's seed)",
            f"{prefix}{trainer[0]}",
        )
    hints = _hints(cls)
    for name, value in data.items():
        key, hint = f"{prefix}{name}", hints[name]
        if dataclasses.is_dataclass(hint):
            if value is not None:  # an empty section sets nothing
                _apply(getattr(node, name), value, hint, f"{key}.")
            continue
        try:
            OmegaConf.update(node, name, value, merge=False)
        except OmegaConfBaseException:
            raise ConfigError(f"{key} must be {_kind(hint)}, got {value!r}", key) from None


def _check(node, cls: type, prefix: str) -> None:
    """The declared ranges and choices (``pipeline.fields``), on the converted values."""
    try:
        check_fields(node, prefix, cls)
    except FieldError as exn:
        raise ConfigError(str(exn), exn.key) from None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_KINDS = {
    bool: ("true or false", "booleans"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    Any: ("any value", "values"),
}


def _kind(hint: Any, plural: bool = False) -> str:
    """A field's type in words, for the ``must be ...`` of an error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        kinds = [_kind(a, plural) for a in args if a is not type(None)]
        return " or ".join(kinds + (["null"] if type(None) in args else []))
    if origin is tuple:
        return f"a list of {len(args)} {_kind(args[0], plural=True)}"
    if origin is list:
        return f"a list of {_kind(args[0], plural=True)}"
    if origin is dict:
        return "mappings" if plural else "a mapping"
    if hint in _KINDS:
        return _KINDS[hint][plural]
    return getattr(hint, "__name__", str(hint))


def _refuse_interpolations(tree: Any, key: str) -> None:
    # A run's config.yaml must say what ran: values are literal, no ${...} resolved at load time.
    if isinstance(tree, dict):
        for k, v in tree.items():
            _refuse_interpolations(v, f"{key}.{k}" if key else str(k))
    elif isinstance(tree, list):
        for v in tree:
            _refuse_interpolations(v, key)
    elif isinstance(tree, str) and "${" in tree:
        raise ConfigError(f"{key} must be a literal value, got the interpolation {tree!r}", key)


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, list[tuple[Path, set[str]]]]:
    """The config file at ``path`` with its ``extends`` chain merged (module docstring), and each
    file of the chain with the keys it sets, this file first (where a value came from)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; pass {CONFIG_FILES}", "config")
    tree = _read_one(path)
    keys = _leaf_keys(tree)
    if EXTENDS not in tree:
        return tree, [(path, keys)]
    spec = tree.pop(EXTENDS)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(
            f"{path}: extends must be the path of the config file this one starts from (relative to "
            f"{path.parent}), got {spec!r}",
            "config",
        )
    base = path.parent / spec  # (an absolute spec stays itself)
    seen = (*chain, path)
    resolved = [p.resolve() for p in seen]
    if base.resolve() in resolved:
        cycle = " -> ".join(str(p) for p in (*seen[resolved.index(base.resolve()) :], base))
        raise ConfigError(
            f"{path}: extends {spec} makes a cycle ({cycle}); one of these files must not extend", "config"
        )
    if not base.is_file():
        raise ConfigError(
            f"{path}: extends {spec}, and there is no such config file ({base}); give a path relative to {path.parent}",
            "config",
        )
    under, files = _read_yaml(base, seen)
    return _merge_over(under, tree), [(path, keys - {EXTENDS}), *files]


def _read_one(path: Path) -> dict:
    try:
        # OmegaConf's YAML reader: YAML 1.2 numbers (1e-4 is a float), duplicate keys refused
        tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError, OSError) as exn:
        raise ConfigError(f"{path} is not a readable YAML config: {' '.join(str(exn).split())}", "config") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {tree!r}", "config")
    return tree


def _merge_over(base: dict, over: dict) -> dict:
    """``over``'s keys merged over ``base`` (``extends``)."""
    base, over = dict(base), _without_empty_sections(base, over)
    if isinstance(base.get("model"), str) and isinstance(over.get("model"), dict):
        base["model"] = {"preset": base["model"]}  # model: tiny, then model: {code_dim: 8}: the preset kept
    try:
        merged = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(over))
        return OmegaConf.to_container(merged, resolve=False)
    except OmegaConfBaseException as exn:
        raise ConfigError(f"config files do not merge: {' '.join(str(exn).split())}", "config") from None


def _without_empty_sections(base: dict, over: dict) -> dict:
    """``over`` less the keys it leaves empty (null) where ``base`` has a mapping: an empty section
    sets nothing (``_apply``), so it must not erase the base's either."""
    out = {}
    for key, value in over.items():
        below = base.get(key)
        if value is None and isinstance(below, dict):
            continue
        both = isinstance(value, dict) and isinstance(below, dict)
        out[key] = _without_empty_sections(below, value) if both else value
    return out


def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    """The dotted keys a config tree sets (a mapping's keys and the keys under them)."""
    keys = set()
    for key, value in tree.items():
        keys.add(f"{prefix}{key}")
        if isinstance(value, dict):
            keys |= _leaf_keys(value, f"{prefix}{key}.")
    return keys


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    if not all(part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"override {item!r}: {key!r} is not a key like data.batch_size")
    try:  # the value as YAML, the same reader as the file's
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]), resolve=False)["value"]
    except (yaml.YAMLError, OmegaConfBaseException) as exn:
        raise ConfigError(f"override {item!r}: the value is not YAML ({' '.join(str(exn).split())})") from None
    return key, value


def _set_dotted(tree: dict, dotted: str, value: Any, item: str) -> None:
    *parents, leaf = dotted.split(".")
    if dotted == "model" and isinstance(value, str):
        value = {"preset": value}  # model=NAME: that preset in place of the whole model block
    node = tree
    for depth, name in enumerate(parents):
        child = node.get(name)
        if child is None:
            child = node[name] = {}
        elif depth == 0 and name == "model" and isinstance(child, str):
            child = node[name] = {"preset": child}  # model: tiny, then model.code_dim=8
        elif not isinstance(child, dict):
            section = ".".join(parents[: depth + 1])
            raise ConfigError(f"override {item!r}: {section} is {child!r}, not a section with keys", section)
        node = child
    node[leaf] = value


def _origin(key: str, origins: dict[str, str], files: list[tuple[Path, set[str]]]) -> str:
    """Where the value behind an error came from: the override that set it (or a section above
    it, or a key below it), else the file of the ``extends`` chain that set it (this file first),
    else the file given."""
    for set_key, item in reversed(origins.items()):
        if key == set_key or key.startswith(set_key + ".") or set_key.startswith(key + "."):
            return f"from the override {item!r}"
    for path, keys in files:
        if key in keys:
            return f"in {path}"
    return f"in {files[0][0]}" if files else ""


def _deep_merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _deep_merge(merged[key], value) if both_dicts else value
    return merged


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
