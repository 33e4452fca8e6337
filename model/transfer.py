"""Weights of one checkpoint onto a freshly built ``AVModel``: what a trained model's weights fix of
the network (``ARCHITECTURE``), DenseAV's weights under ``AVModel``'s names, and heads matched by
the audio type they answer.

``transfer_weights(source, model)`` loads ``source`` (an ``AVModel`` read from this project's
checkpoint, or a ``model.denseav.DenseAVModel``) into ``model``, which was built (and seeded) for
the architecture ``architecture(source)`` describes:

* this project's model: its state dict as it is;
* DenseAV's (``denseav_state``): DINO's fused qkv split into the ViT's q/k/v projections (DenseAV's
  LoRA is already merged into them: ``model``'s own LoRA adapters keep their seeded init, B = 0, so
  the function is DenseAV's), the aligners' (1, 3) convolutions as 1-D ones, the audio CLS token as
  the vector DenseAV computes from its ``audio_cls`` (norm, then linear), the calibration weight as
  the temperature.

Heads are matched by type (``head_mapping``, names from ``model.config.head_types_of``): the
checkpoint's head answering type t becomes ``model``'s head answering t, by reordering the channel
blocks of every aligner weight (``permute_heads``; exact). Whatever keeps the weights from going
onto ``model`` is one line, a ``TransferError``; the caller names the checkpoint (training's
``init_from`` turns it into its ``ConfigError``).
"""

from __future__ import annotations

from typing import Any

import torch

from .checkpoint import misfit, state_shapes
from .config import ModelConfig, head_types_of
from .denseav import ATTENTION_HEADS, DENSEAV_EPS, DenseAVModel
from .network import AVModel

# ModelConfig fields that fix the function a checkpoint's weights compute (the rest are training
# choices a run from those weights may change: dropout, checkpointing, kernels, the input resolution, ...)
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
# HuBERT's SpecAugment embedding exists only where mask_time_prob > 0: a checkpoint may lack it
PROJECT_SEEDED = ("masked_spec_embed",)
# DenseAV's weights also leave the LoRA adapters at their seeded init: its LoRA is merged into the ViT
SEEDED = ("lora_A", "lora_B", *PROJECT_SEEDED)
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


class TransferError(ValueError):
    """Weights that cannot go onto the model as it was built; one line, without the checkpoint's
    name (the caller adds it)."""


# --------------------------------------------------------------------------- the architecture


def architecture(source: AVModel | DenseAVModel) -> dict[str, Any]:
    """The ``ModelConfig`` fields (as a dict) of the ``AVModel`` that computes ``source``'s function."""
    if isinstance(source, AVModel):
        return source.config.to_dict()
    if isinstance(source, DenseAVModel):
        return denseav_architecture(source)
    raise TransferError(f"a {type(source).__name__} has no weights that map onto AVModel")


def architecture_differences(mine: dict[str, Any], need: dict[str, Any], lora: bool = True) -> list[tuple]:
    """``(field, mine, need)`` for every ``ARCHITECTURE`` field and backbone key where the config
    ``mine`` (a ``frozen_config`` dict: the backbones' exact configs) differs from ``need``; the
    backbone keys as ``image_backbone.<key>`` / ``audio_backbone.<key>``. ``lora=False`` leaves the
    LoRA fields out (DenseAV's LoRA is merged into its ViT: any adapters start at zero)."""
    diffs = []
    for name in ARCHITECTURE:
        if name in need and (lora or not name.startswith("lora_")) and mine[name] != need[name]:
            diffs.append((name, mine[name], need[name]))
    for section, keys in (("image_backbone", VIT_ARCHITECTURE), ("audio_backbone", HUBERT_ARCHITECTURE)):
        own, theirs = mine[section], need.get(section, {})
        for key in keys:
            if key in own and key in theirs and own[key] != theirs[key]:
                diffs.append((f"{section}.{key}", own[key], theirs[key]))
    return diffs


def denseav_architecture(dense: DenseAVModel) -> dict[str, Any]:
    """The ``ModelConfig`` fields (as a dict) of the ``AVModel`` that computes ``dense``'s function;
    ``TransferError`` for a DenseAV network ``AVModel`` has no counterpart of."""
    config = dense.config
    if config.use_cls:
        raise TransferError(
            "this DenseAV model adds the CLS similarity to every cell (sim_use_cls), which AVModel does not "
            "have; fine-tune a model without it (DenseAV's released models have none)"
        )
    if dense.attention_padding:
        raise TransferError(
            f"its aligners' {config.code_dim} channels are padded to a multiple of {ATTENTION_HEADS} for "
            f"DenseAV's attention, which AVModel's attention cannot hold; only models whose channels split "
            f"into {ATTENTION_HEADS} attention heads can be fine-tuned"
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


# --------------------------------------------------------------------------- the weights


def transfer_weights(source: AVModel | DenseAVModel, model: AVModel) -> dict[int, int]:
    """``source``'s weights into ``model`` (built for ``architecture(source)``), heads matched by
    audio type; returns ``model``'s head -> ``source``'s head. ``TransferError`` for weights that
    do not fit."""
    if isinstance(source, AVModel):
        state, seeded = {k: v.detach() for k, v in source.state_dict().items()}, PROJECT_SEEDED
    elif isinstance(source, DenseAVModel):
        state, seeded = denseav_state(source, model), SEEDED
    else:
        raise TransferError(f"a {type(source).__name__} has no weights that map onto AVModel")
    mapping = head_mapping(source.config, model.config)
    state = permute_heads(state, [mapping[k] for k in range(model.config.num_heads)], model.config)
    load_weights(model, state, seeded)
    return mapping


def load_weights(model: AVModel, state: dict[str, torch.Tensor], seeded: tuple[str, ...] = ()) -> None:
    """``state`` (``model``'s names) into ``model``: every tensor of the model but the ``seeded``
    ones (names containing one of them, where ``state`` lacks them) must come from it."""
    own = model.state_dict()
    keep = {k for k in own if k not in state and any(s in k for s in seeded)}
    state = {k: v for k, v in state.items() if k in own or not any(s in k for s in seeded)}
    problem = misfit({k: v for k, v in state_shapes(own).items() if k not in keep}, state_shapes(state), "model")
    if problem:
        raise TransferError(f"its weights do not fit this model ({problem})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


def _vit_layout(own: dict[str, Any]) -> dict[str, Any]:
    for layout in VIT_LAYOUTS:
        first = IMAGE + layout["layer"].format(i=0) + layout["norm1"] + ".weight"
        if first in own:
            return layout
    raise TransferError("this transformers version's ViT has module names this converter does not know")


def _linear(own: dict[str, Any], name: str) -> str:
    """A linear layer's state-dict prefix, inside peft's LoRA wrapper where it has one."""
    return name + ".base_layer" if name + ".base_layer.weight" in own else name


@torch.no_grad()
def denseav_state(dense: DenseAVModel, model: AVModel) -> dict[str, torch.Tensor]:
    """``dense``'s weights under ``model``'s state-dict names."""
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


# --------------------------------------------------------------------------- heads


def head_mapping(source: Any, target: ModelConfig) -> dict[int, int]:
    """``target``'s head -> the head of ``source`` (any model's config with as many heads) that
    answers the same audio type (``head_types_of``); a one-head model's only head answers every type."""
    theirs, mine = head_types_of(source), head_types_of(target)
    if len(theirs) == 1:
        return {k: 0 for k in range(len(mine))}
    missing = [t for t in mine if t not in theirs]
    if missing:
        raise TransferError(
            f"its heads answer {theirs}, this model's {mine}: no head of the checkpoint answers {missing} "
            "(model.head_types must name the checkpoint's types)"
        )
    return {k: theirs.index(t) for k, t in enumerate(mine)}


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
