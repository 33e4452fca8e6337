"""Fine-tuning: a run that starts from a trained model's weights (``init_from``) instead of its seeded
init, and the optimizer groups of ``optim.backbone_lr_scale``.

``start_from(model, cfg)`` loads, once, into the freshly built model (after the seeded init, before
the optimizer and step 0):

* this project's checkpoint: a run's ``final/``, its ``checkpoints/step_N/`` (the model inside the
  training state), a ``model.safetensors`` with its ``config.json`` beside it, or a Hub repo id;
* a DenseAV checkpoint (``.ckpt``, ``model.safetensors`` or its Hugging Face folder or repo id), read
  by ``model.denseav_convert`` and mapped onto ``AVModel``'s modules (``denseav_state``): DINO's fused
  qkv split into the ViT's q/k/v projections (DenseAV's LoRA is already merged into them: the run's
  own LoRA adapters start at their seeded init, B = 0, so the function is DenseAV's), the aligners'
  (1, 3) convolutions as 1-D ones, the audio CLS token as the vector DenseAV computes from its
  ``audio_cls`` (norm, then linear), the calibration weight as the temperature.

Both go through ``model.loading.load_any``, the one loader, so they are checked as evaluation checks
them. The architecture must be the checkpoint's (``ARCHITECTURE``): a difference is one
``ConfigError`` naming the checkpoint, the fields and the values that would match. Heads are matched
by the audio type they answer (``head_types``): the checkpoint's sound head becomes the run's
``sound_head`` and its speech head the run's ``speech_head`` (``permute_heads`` reorders the channel
blocks of every aligner weight; exact, tested). DenseAV's files record no head types: the speech head
is ``init_speech_head`` when given, else load_any's detection from the model's activations on probe
clips (three eSpeak NG sentences against a noise burst, a chirp and a hum, each scored with a smooth
random image, as Pred.Dis assigns heads).

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

from model.checkpoint import CONFIG_FILE, FORMAT, WEIGHTS_FILE, frozen_config, misfit, state_shapes
from model.config import ModelConfig
from model.loading import Loaded, load_any
from model.network import AVModel
from pipeline.atomic import write_json
from pipeline.tts import TTSError
from training.config import ConfigError, OptimConfig, TrainConfig

RECORD_FILE = "init_from.json"
# ModelConfig fields that fix the function a checkpoint's weights compute (the rest are training
# choices a fine-tuning run may change: dropout, checkpointing, kernels, the input resolution, ...)
ARCHITECTURE = (
    "code_dim",
    "num_heads",
    "lora_rank",
    "lora_alpha",
    "lora_targets",
    "norm_eps",
    "audio_pool",
    "audio_self_attention",
    "audio_attention_heads",
    "normalize_waveform",
)
# the backbone config keys among them (transformers' ViTConfig / HubertConfig; dropout left out)
VIT_ARCHITECTURE = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "image_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
)
HUBERT_ARCHITECTURE = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "feat_extract_norm",
    "feat_extract_activation",
    "do_stable_layer_norm",
    "conv_dim",
    "conv_stride",
    "conv_kernel",
    "conv_bias",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
    "feat_proj_layer_norm",
    "conv_pos_batch_norm",
)
# DenseAV's weights leave these at the run's seeded init: its LoRA is merged into the ViT, and
# HuBERT's SpecAugment embedding exists only where mask_time_prob > 0
SEEDED = ("lora_A", "lora_B", "masked_spec_embed")
# the ViT's module names in the installed transformers (5.x first, then 4.x)
VIT_LAYOUTS = (
    {
        "layer": "layers.{i}.",
        "qkv": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
        "norm1": "layernorm_before",
        "out": "attention.o_proj",
        "norm2": "layernorm_after",
        "mlp.0": "mlp.fc1",
        "mlp.2": "mlp.fc2",
    },
    {
        "layer": "encoder.layer.{i}.",
        "qkv": ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
        "norm1": "layernorm_before",
        "out": "attention.output.dense",
        "norm2": "layernorm_after",
        "mlp.0": "intermediate.dense",
        "mlp.2": "output.dense",
    },
)
IMAGE = "image_encoder.backbone."
AUDIO = "audio_encoder.backbone."


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
    if kind == "project":
        need = source.config.to_dict()
        state = {k: v.detach() for k, v in source.state_dict().items()}
        seeded: tuple[str, ...] = ("masked_spec_embed",)
        hint = _run_config(Path(desc["checkpoint"]))
    elif kind == "denseav":
        need = denseav_architecture(source, spec)
        state = denseav_state(source, model)
        seeded, hint = SEEDED, None
    else:
        raise ConfigError(
            f"init_from {spec} is a {kind} release (one similarity head, other encoders), not a model this "
            "trainer fine-tunes: give a run's final/ or checkpoints/step_N/ directory, or a DenseAV checkpoint",
            "init_from",
        )
    _check_architecture(spec, model, need, hint, lora=kind == "project")
    mapping = head_mapping(spec, source.config, model.config)
    state = permute_heads(state, [mapping[k] for k in range(model.config.num_heads)], model.config)
    _load_state(spec, model, state, seeded)
    record: dict[str, Any] = {
        "path": spec,
        "kind": kind,
        "resolved": desc.get("checkpoint") or desc.get("file"),
        # run head -> checkpoint head, by the audio type each answers
        "heads": {str(k): mapping[k] for k in range(model.config.num_heads)},
        "head_types": head_types(model.config),
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
    except ValueError as exc:
        # a DenseAV file that does not say how many heads it has: the run's model says
        if "does not say how many heads" not in str(exc):
            raise
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


def _load_state(spec: str, model: AVModel, state: dict[str, torch.Tensor], seeded: tuple[str, ...]) -> None:
    """``state`` into ``model``: every tensor of the model but the ``seeded`` ones must come from it."""
    own = model.state_dict()
    keep = {k for k in own if k not in state and any(s in k for s in seeded)}
    state = {k: v for k, v in state.items() if k in own or not any(s in k for s in seeded)}
    problem = misfit({k: v for k, v in state_shapes(own).items() if k not in keep}, state_shapes(state), "run")
    if problem:
        raise ConfigError(f"init_from {spec}: its weights do not fit this run's model ({problem})", "init_from")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


# --------------------------------------------------------------------------- architecture


def _check_architecture(spec: str, model: AVModel, need: dict, hint: Path | None, lora: bool) -> None:
    """``ConfigError`` naming every architecture field where the run differs from ``need``."""
    run = frozen_config(model).to_dict()
    diffs = []
    for name in ARCHITECTURE:
        if name in need and (lora or not name.startswith("lora_")) and run[name] != need[name]:
            diffs.append((f"model.{name}", run[name], need[name]))
    for section, keys in (("image_backbone", VIT_ARCHITECTURE), ("audio_backbone", HUBERT_ARCHITECTURE)):
        mine, theirs = run[section], need.get(section, {})
        for key in keys:
            if key in mine and key in theirs and mine[key] != theirs[key]:
                diffs.append((f"model.{section}.{key}", mine[key], theirs[key]))
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


# --------------------------------------------------------------------------- heads


def head_types(config) -> list[str | None]:
    """The audio type each head answers: ``head_types`` where the config has it, else the two-head
    model's ``sound_head``/``speech_head`` (None for heads without a type)."""
    types = getattr(config, "head_types", None)
    if types:
        return list(types)
    names: list[str | None] = [None] * config.num_heads
    if config.num_heads > 1:
        names[config.sound_head], names[config.speech_head] = "sound", "speech"
    return names


def head_mapping(spec: str, source, target: ModelConfig) -> dict[int, int]:
    """Run head -> checkpoint head answering the same audio type (heads without a type keep their index)."""
    theirs, mine = head_types(source), head_types(target)
    mapping = {}
    for k, kind in enumerate(mine):
        if kind is None or kind not in theirs:
            if kind is not None and any(t is not None for t in theirs):
                raise ConfigError(
                    f"init_from {spec}: its heads answer {theirs}, this run's {mine}; a head type of the run "
                    "has no head in the checkpoint (model.head_types must name the checkpoint's types)",
                    "init_from",
                )
            mapping[k] = k
        else:
            mapping[k] = theirs.index(kind)
    return mapping


def permute_heads(state: dict[str, torch.Tensor], order: list[int], config: ModelConfig) -> dict[str, torch.Tensor]:
    """``state`` (AVModel's names) with head block k of every aligner weight taken from head
    ``order[k]``: rows of the maps that write the head-major channels, columns of those that read
    them. The audio self-attention's residual stream carries those channels: permuting its norms,
    the inputs of qkv and the MLP and the outputs of ``out`` and the MLP permutes its output the same
    way and changes nothing else (LayerNorm is equivariant to a channel permutation)."""
    if order == list(range(len(order))):
        return state
    c = config.code_dim
    index = torch.cat([torch.arange(j * c, (j + 1) * c) for j in order])
    rows = ["image_aligner.proj.weight", "image_aligner.proj.bias", "audio_aligner.cls_token"]
    cols = []
    for i in range(len(config.audio_pool)):
        rows += [f"audio_aligner.convs.{i}.weight", f"audio_aligner.convs.{i}.bias"]
        if i:
            cols.append(f"audio_aligner.convs.{i}.weight")
    if config.audio_self_attention:
        att = "audio_aligner.attention."
        rows += [att + n for n in ("norm1.weight", "norm1.bias", "out.weight", "out.bias", "norm2.weight")]
        rows += [att + n for n in ("norm2.bias", "mlp.2.weight", "mlp.2.bias")]
        cols += [att + "qkv.weight", att + "mlp.0.weight"]
    out = dict(state)
    for key in rows:
        out[key] = out[key].index_select(0, index)
    for key in cols:
        out[key] = out[key].index_select(1, index)
    return out


# --------------------------------------------------------------------------- DenseAV


def denseav_architecture(dense, spec: str) -> dict[str, Any]:
    """The ``ModelConfig`` fields (as a dict) of the ``AVModel`` that computes ``dense``'s function."""
    from model.denseav import ATTENTION_HEADS, DENSEAV_EPS

    config = dense.config
    if config.use_cls:
        raise ConfigError(
            f"init_from {spec}: this DenseAV model adds the CLS similarity to every cell (sim_use_cls), which "
            "AVModel does not have; fine-tune a model without it (DenseAV's released models have none)",
            "init_from",
        )
    if dense.attention_padding:
        raise ConfigError(
            f"init_from {spec}: its aligners' {config.code_dim} channels are padded to a multiple of "
            f"{ATTENTION_HEADS} for DenseAV's attention, which AVModel's attention cannot hold; only models whose "
            f"channels split into {ATTENTION_HEADS} attention heads can be fine-tuned",
            "init_from",
        )
    vit = config.vit
    return {
        "code_dim": config.code_dim // config.num_heads,
        "num_heads": config.num_heads,
        "norm_eps": DENSEAV_EPS,
        "audio_pool": [3, 3],
        "audio_self_attention": True,
        "audio_attention_heads": ATTENTION_HEADS,
        "normalize_waveform": True,
        "image_backbone": {
            "hidden_size": vit["dim"],
            "num_hidden_layers": vit["depth"],
            "num_attention_heads": vit["heads"],
            "intermediate_size": vit["mlp"],
            "hidden_act": "gelu",
            "layer_norm_eps": DENSEAV_EPS,
            "image_size": vit["grid"] * vit["patch"],
            "patch_size": vit["patch"],
            "num_channels": 3,
            "qkv_bias": True,
        },
        "audio_backbone": dict(config.hubert),
    }


def _vit_layout(own: dict[str, Any]) -> dict[str, Any]:
    for layout in VIT_LAYOUTS:
        first = IMAGE + layout["layer"].format(i=0) + layout["norm1"] + ".weight"
        if first in own:
            return layout
    raise ConfigError("init_from: this transformers version's ViT has module names this converter does not know")


def _linear(own: dict[str, Any], name: str) -> str:
    """A linear layer's state-dict prefix, inside peft's LoRA wrapper where it has one."""
    return name + ".base_layer" if name + ".base_layer.weight" in own else name


@torch.no_grad()
def denseav_state(dense, model: AVModel) -> dict[str, torch.Tensor]:
    """``dense``'s weights (a ``model.denseav.DenseAVModel``) under ``model``'s state-dict names."""
    own = model.state_dict()
    src = {k: v.detach() for k, v in dense.state_dict().items()}
    layout = _vit_layout(own)
    out = {
        IMAGE + "embeddings.cls_token": src["image_backbone.cls_token"],
        IMAGE + "embeddings.position_embeddings": src["image_backbone.pos_embed"],
        IMAGE + "embeddings.patch_embeddings.projection.weight": src["image_backbone.patch_embed.weight"],
        IMAGE + "embeddings.patch_embeddings.projection.bias": src["image_backbone.patch_embed.bias"],
        IMAGE + "layernorm.weight": src["image_backbone.norm.weight"],
        IMAGE + "layernorm.bias": src["image_backbone.norm.bias"],
    }
    for i in range(len(dense.image_backbone.blocks)):
        block, layer = f"image_backbone.blocks.{i}.", IMAGE + layout["layer"].format(i=i)
        for part in ("weight", "bias"):
            # DINO's fused qkv: rows [q; k; v], each head's slice consecutive, as the ViT's three projections
            for name, chunk in zip(layout["qkv"], src[block + "qkv." + part].chunk(3)):
                out[f"{_linear(own, layer + name)}.{part}"] = chunk
            for mine in ("norm1", "out", "norm2", "mlp.0", "mlp.2"):
                out[f"{_linear(own, layer + layout[mine])}.{part}"] = src[f"{block}{mine}.{part}"]
    out.update({AUDIO + k[len("audio_backbone.") :]: v for k, v in src.items() if k.startswith("audio_backbone.")})
    for part in ("weight", "bias"):
        out[f"image_aligner.norm.norm.{part}"] = src[f"image_norm.{part}"]
        out[f"image_aligner.proj.{part}"] = src[f"image_proj.{part}"]
        out[f"audio_aligner.norm.norm.{part}"] = src[f"audio_norm.{part}"]
    for i, name in enumerate(("audio_pool1", "audio_pool2")):  # (1, 3) convolutions over [B, C, 1, T]
        out[f"audio_aligner.convs.{i}.weight"] = src[f"{name}.weight"].squeeze(2)
        out[f"audio_aligner.convs.{i}.bias"] = src[f"{name}.bias"]
    out.update({"audio_aligner." + k: v for k, v in src.items() if k.startswith("attention.")})
    # DenseAV's CLS token is audio_cls_layer(audio_norm(audio_cls)), a constant: AVModel learns it directly
    out["audio_aligner.cls_token"] = dense.audio_cls_layer(dense.audio_norm(dense.audio_cls))
    out["log_logit_scale"] = src["sim_cal_w"].reshape(())
    return out
