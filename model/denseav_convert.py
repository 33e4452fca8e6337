"""Reading DenseAV's released checkpoints into ``model.denseav.DenseAVModel``.

Accepted: the Lightning ``.ckpt`` files of DenseAV's torch.hub entries (a dict with ``state_dict``),
read with ``torch.load(weights_only=True)`` only, and the Hugging Face copies (``model.safetensors``,
with its ``config.json`` of LitAVAligner's arguments beside it, or their folder). Anything that needs
unpickling is refused with one line saying what to do.

The state dict is renamed, not guessed: ``image_model.[base_model.model.]model.*`` (DINO, LoRA on
``qkv`` merged into the base weight as W + (alpha/r)·B·A, peft 0.5's ``qkv.weight`` and peft >= 0.7's
``qkv.base_layer.weight`` alike), ``audio_model.model.*`` (HuBERT, positional conv weight norm as
``weight_g``/``weight_v`` or as parametrizations), ``audio_aligner.mod_list.{1,2,3,4}``,
``image_aligner.{norm.norm,layer,cls_layer}``, ``sim_cal.w``, ``audio_cls``. Sizes come from the
shapes; what shapes cannot tell (strides, head widths, HuBERT's stable layer norm) are DenseAV's
published facts, constants below. The number of similarity heads is not in any shape either (DenseAV
splits the aligners' ``code_dim`` channels into heads inside the similarity, no weight has a head
axis): it comes from ``sim_agg_heads``, the file name, or the caller (``--num-heads``).

Every entry is checked before use: a tensor (not a string or a number), floating point and finite
where the converter reads it, and shapes that fit the layout the sizes describe (compared on a
model built on the ``meta`` device, so a hostile shape allocates nothing); each refusal is one
line naming the file and the first bad key.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, weight_problems
from .denseav import DenseAVConfig, DenseAVModel

LORA_ALPHA = 32.0  # DenseAV's LoraConfig(lora_alpha=32); r is read off lora_A's shape
HEAD_WIDTH = 64  # DINO ViT-S: 384 / 6 heads; HuBERT Large: 1024 / 16 heads
HUBERT_STRIDES = [5, 2, 2, 2, 2, 2, 2]  # HuBERT's conv front end (320-sample hop)
HUBERT_FACTS = dict(
    do_stable_layer_norm=True,
    hidden_act="gelu",
    feat_extract_activation="gelu",
    layer_norm_eps=1e-4,  # DenseAV raises hubert-large-ls960-ft's eps to 1e-4
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    layerdrop=0.0,
    apply_spec_augment=False,
)
HF_REPOS = "mhamilton723/DenseAV-{sound-language,language,sound}"
# LitAVAligner arguments the network depends on, as config.json / hyper_parameters name them
HPARAMS = (
    "code_dim",
    "sim_agg_heads",
    "sim_use_cls",
    "mask_silence",
    "nonneg_sim",
    "head_agg",
    "image_model_type",
    "audio_model_type",
    "image_aligner_type",
    "audio_aligner_type",
    "sim_agg_type",
)
# the state-dict entries the converter reads (everything else in a Lightning file is ignored)
USED_PREFIXES = (
    "image_model.",
    "audio_model.model.",
    "audio_aligner.mod_list.",
    "image_aligner.",
    "sim_cal.w",
    "audio_cls",
)
NUM_HEADS_HELP = (
    "pass --num-heads to ground or evaluate.py (num_heads= to model.loading.load_any): 2 for "
    "denseav_2head / DenseAV-sound-language, 1 for the language or sound model"
)


class DenseAVFormatError(CheckpointError):
    """A DenseAV file this converter cannot read; the message names the file and what to do (its
    own wording: the project's re-export advice does not apply to DenseAV's files)."""

    def __init__(self, message: str):
        ValueError.__init__(self, message)


class HeadCountUnknown(DenseAVFormatError):
    """The file does not say how many heads its model has (a caller may supply ``num_heads``)."""


def is_denseav(path: Path) -> bool:
    """Whether ``path`` looks like a DenseAV file or Hugging Face folder rather than this project's
    checkpoint directory."""
    if path.is_dir():
        return _litavaligner_config(path / "config.json")
    return path.suffix in (".ckpt", ".pt", ".pth", ".safetensors")


def _litavaligner_config(path: Path) -> bool:
    """A Hugging Face copy's config.json: LitAVAligner's arguments, no project ``format`` field."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "format" not in doc and any(k in doc for k in HPARAMS)


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, LitAVAligner arguments found beside or inside it) of a DenseAV file or folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise DenseAVFormatError(f"{path}: no such DenseAV file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DenseAVFormatError(f"{path}: not a readable safetensors file ({exc}); download it again") from exc
        config = path.parent / "config.json"
        try:
            hparams = json.loads(config.read_text()) if config.is_file() else {}
        except ValueError as exc:
            raise DenseAVFormatError(f"{config}: not JSON ({exc}); download it again") from exc
        return check_entries(path, state), hparams if isinstance(hparams, dict) else {}
    state, hparams = _read_ckpt(path)
    return check_entries(path, state), hparams


def check_entries(path: Path, state: dict) -> dict[str, torch.Tensor]:
    """``state`` once every entry is a tensor under a string key and every weight the converter
    reads is floating point and finite; else one line naming ``path`` and the first bad key."""
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise DenseAVFormatError(
                f"{path}: state-dict entry {key!r} holds a {type(value).__name__}, not a "
                "tensor; the file is damaged or was not saved from DenseAV: download it again"
            )
    used = {k: v for k, v in state.items() if k.startswith(USED_PREFIXES)}
    bad = weight_problems(used)
    if bad:
        (key, problem), more = bad[0], f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise DenseAVFormatError(
            f"{path}: weight {key} {problem}{more}; DenseAV's released weights are finite "
            "float32 (a damaged, diverged or quantized copy?): download the original file"
        )
    return state


def _read_ckpt(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (it holds {found.group(1)})" if found else ""
        raise DenseAVFormatError(
            f"{path}: needs unpickling{what}, which this loader never does; re-save its state_dict with "
            f"safetensors in DenseAV's own environment, or use the Hugging Face copy ({HF_REPOS}: "
            "model.safetensors + config.json)"
        ) from exc
    except (OSError, RuntimeError, EOFError) as exc:
        raise DenseAVFormatError(f"{path}: not a readable torch checkpoint ({exc}); download it again") from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        hparams = data.get("hyper_parameters")
        return data["state_dict"], dict(hparams) if isinstance(hparams, dict) else {}
    if isinstance(data, dict) and any(isinstance(v, torch.Tensor) for v in data.values()):
        return data, {}  # a bare state dict (check_entries names any entry that is not a tensor)
    raise DenseAVFormatError(
        f"{path}: holds no state_dict of tensors; point it at DenseAV's .ckpt or model.safetensors"
    )


# --------------------------------------------------------------------------- renaming


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def merge_lora(vit: dict[str, torch.Tensor], alpha: float = LORA_ALPHA) -> tuple[dict[str, torch.Tensor], str]:
    """DINO keys with peft's LoRA folded into each base weight; returns the key style found."""
    out, style = {}, "no LoRA"
    for key, value in vit.items():
        if ".lora_" in key:
            continue
        base = key.replace(".base_layer.", ".")
        if base != key:
            style = "peft >= 0.7 (base_layer)"
        out[base] = value
    for key in [k for k in vit if ".lora_A." in k]:
        module = key.split(".lora_A.")[0]
        adapter = key.split(".lora_A.")[1].rsplit(".weight", 1)[0]
        a, b = vit[key], vit.get(f"{module}.lora_B.{adapter}.weight")
        if b is None:
            raise ValueError(f"{module}: lora_A without lora_B")
        target = f"{module.replace('.base_layer', '')}.weight"
        base = out.get(target)
        # B·A must have the base weight's shape: checked first, so the product is never larger than
        # a tensor the file holds
        if (
            base is None
            or a.dim() != 2
            or b.dim() != 2
            or b.shape[1] != a.shape[0]
            or (b.shape[0], a.shape[1]) != tuple(base.shape)
        ):
            raise ValueError(
                f"{module}: LoRA B {tuple(b.shape)} x A {tuple(a.shape)} does not fit the base weight "
                f"{None if base is None else tuple(base.shape)}"
            )
        out[target] = out[target] + (alpha / a.shape[0]) * (b.float() @ a.float()).to(out[target].dtype)
        if style == "no LoRA":
            style = "peft 0.5 (qkv.weight)"
    return out, style


def _vit_keys(vit: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINO's block names -> ``DinoViT``'s (its blocks are ``model.aligners.SelfAttentionBlock``)."""
    names = {
        "attn.qkv": "qkv",
        "attn.proj": "out",
        "mlp.fc1": "mlp.0",
        "mlp.fc2": "mlp.2",
        "patch_embed.proj": "patch_embed",
    }
    out = {}
    for key, value in vit.items():
        for old, new in names.items():
            key = re.sub(rf"(^|\.){re.escape(old)}\.", rf"\g<1>{new}.", key)
        out[key] = value
    return out


def _hubert_keys(hubert: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Weight-norm names of the positional conv as the installed transformers spells them."""
    pairs = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
    out = {}
    for key, value in hubert.items():
        if key not in expected:
            for old, new in pairs.items():
                for a, b in ((old, new), (new, old)):
                    if key.endswith(a) and key[: -len(a)] + b in expected:
                        key = key[: -len(a)] + b
        out[key] = value
    return out


def _vit_sizes(vit: dict[str, torch.Tensor]) -> dict[str, int]:
    positions = vit["pos_embed"].shape[1] - 1  # the CLS, then a square grid of patches
    if positions < 1 or math.isqrt(positions) ** 2 != positions:
        raise ValueError(f"pos_embed {tuple(vit['pos_embed'].shape)} holds no square grid of patch positions")
    dim = vit["cls_token"].shape[-1]
    depth = len({k.split(".")[1] for k in vit if k.startswith("blocks.")})
    return dict(
        dim=dim,
        depth=depth,
        heads=max(1, dim // HEAD_WIDTH),
        mlp=vit["blocks.0.mlp.fc1.weight"].shape[0],
        patch=vit["patch_embed.proj.weight"].shape[-1],
        grid=int(round((vit["pos_embed"].shape[1] - 1) ** 0.5)),
    )


def _hubert_config(hubert: dict[str, torch.Tensor]) -> dict[str, Any]:
    convs = sorted({int(k.split(".")[2]) for k in hubert if k.startswith("feature_extractor.conv_layers.")})
    weights = [hubert[f"feature_extractor.conv_layers.{i}.conv.weight"] for i in convs]
    dim = hubert["feature_projection.projection.weight"].shape[0]
    pos = next(
        v
        for k, v in hubert.items()
        if k.startswith("encoder.pos_conv_embed.conv.") and (k.endswith("weight_v") or k.endswith("original1"))
    )
    return dict(
        HUBERT_FACTS,
        hidden_size=dim,
        num_attention_heads=max(1, dim // HEAD_WIDTH),
        num_hidden_layers=len({k.split(".")[2] for k in hubert if k.startswith("encoder.layers.")}),
        intermediate_size=hubert["encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0],
        conv_dim=[w.shape[0] for w in weights],
        conv_kernel=[w.shape[-1] for w in weights],
        conv_stride=HUBERT_STRIDES[: len(weights)],
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in hubert,
        feat_extract_norm="layer" if "feature_extractor.conv_layers.1.layer_norm.weight" in hubert else "group",
        feat_proj_layer_norm="feature_projection.layer_norm.weight" in hubert,
        num_conv_pos_embeddings=pos.shape[-1],
        num_conv_pos_embedding_groups=dim // pos.shape[1],
        mask_time_prob=0.05 if "masked_spec_embed" in hubert else 0.0,
    )


def _aligner_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    audio, image = _strip(state, "audio_aligner.mod_list."), _strip(state, "image_aligner.")
    out = {"audio_norm." + k[len("1.norm.") :]: v for k, v in audio.items() if k.startswith("1.norm.")}
    out.update({"audio_pool1." + k[len("2.layer.") :]: v for k, v in audio.items() if k.startswith("2.layer.")})
    out.update(
        {"audio_cls_layer." + k[len("2.cls_layer.") :]: v for k, v in audio.items() if k.startswith("2.cls_layer.")}
    )
    out.update({"audio_pool2." + k[len("3.layer.") :]: v for k, v in audio.items() if k.startswith("3.layer.")})
    attention = _vit_keys({k[len("4.block.") :]: v for k, v in audio.items() if k.startswith("4.block.")})
    out.update({"attention." + k: v for k, v in attention.items()})
    out.update({"image_norm." + k[len("norm.norm.") :]: v for k, v in image.items() if k.startswith("norm.norm.")})
    out.update({"image_proj." + k[len("layer.") :]: v for k, v in image.items() if k.startswith("layer.")})
    out.update({"image_cls_layer." + k[len("cls_layer.") :]: v for k, v in image.items() if k.startswith("cls_layer.")})
    out["sim_cal_w"] = state["sim_cal.w"].reshape(1)
    out["audio_cls"] = state["audio_cls"]
    return out


# --------------------------------------------------------------------------- the model


def _num_heads(path: Path, hparams: dict[str, Any], num_heads: int | None, code_dim: int) -> int:
    """The caller's ``num_heads``, else ``sim_agg_heads``, else the released files' names; each
    must split ``code_dim`` (the only constraint the shapes put on it)."""
    name = str(path).lower()
    if num_heads is not None:
        heads, source = num_heads, "num_heads"
    elif "sim_agg_heads" in hparams:
        heads, source = hparams["sim_agg_heads"], "the file's sim_agg_heads"
    elif "2head" in name or "sound-language" in name or "sound_language" in name:
        heads, source = 2, "the file name"
    elif "language" in name or "sound" in name:
        heads, source = 1, "the file name"
    else:
        raise HeadCountUnknown(
            f"{path}: the file does not say how many heads the model has, and its weights cannot tell (DenseAV's "
            f"heads split the aligners' {code_dim} output channels; no weight has a head axis); {NUM_HEADS_HELP}"
        )
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or code_dim % heads:
        raise DenseAVFormatError(
            f"{path}: {heads!r} heads ({source}) do not split the aligners' {code_dim} "
            f"output channels; {NUM_HEADS_HELP}"
        )
    return heads


def convert(path: str | Path, *, num_heads: int | None = None) -> tuple[DenseAVModel, dict[str, Any]]:
    """A ``DenseAVModel`` with the file's weights (eval mode, CPU) and what was read, as a dict."""
    path = Path(path)
    state, hparams = read_state(path)
    try:
        return _convert(path, state, hparams, num_heads)
    except (KeyError, StopIteration, ValueError, IndexError, TypeError, ArithmeticError, RuntimeError) as exc:
        # shapes that do not fit the layout fail in the size arithmetic, a reshape or the meta model
        if isinstance(exc, DenseAVFormatError):
            raise
        raise DenseAVFormatError(
            f"{path}: not DenseAV's checkpoint layout ({type(exc).__name__}: {exc}); "
            "point it at denseav_*.ckpt or a DenseAV model.safetensors"
        ) from exc


def _convert(path, state, hparams, num_heads):
    if hparams.get("nonneg_sim"):
        raise DenseAVFormatError(
            f"{path}: nonneg_sim=True models clamp the volume, which this evaluation's "
            "similarity does not; not supported"
        )
    vit_raw = _strip(state, "image_model.")
    vit_raw = _strip(vit_raw, "base_model.model.") or vit_raw
    vit, lora_style = merge_lora(_strip(vit_raw, "model."))
    hubert = _strip(state, "audio_model.model.")
    if not vit or not hubert:
        raise DenseAVFormatError(f"{path}: no image_model.* / audio_model.model.* weights; not a DenseAV checkpoint")
    code_dim = state["image_aligner.layer.weight"].shape[0]
    heads = _num_heads(path, hparams, num_heads, code_dim)
    sizes = _vit_sizes(vit)
    config = DenseAVConfig(
        vit=sizes,
        hubert=_hubert_config(hubert),
        code_dim=code_dim,
        num_heads=heads,
        sound_head=0,
        speech_head=1 if heads == 2 else 0,
        use_cls=bool(hparams.get("sim_use_cls", False)),
        mask_silence=bool(hparams.get("mask_silence", True)),
        image_size=sizes["grid"] * sizes["patch"],
    )
    # The sizes come from a few shapes; the layout they describe is checked against every shape on
    # a model without storage before one with storage is built (a hostile 1 x 1 x 10^5 cls_token
    # would otherwise ask for a 10^5-wide ViT).
    with torch.device("meta"):
        weights, own = _fitted(path, DenseAVModel(config), vit, hubert, state)
    model = DenseAVModel(config)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})
    info = {
        "kind": "denseav",
        "file": str(path),
        "lora": lora_style,
        "lora_alpha": LORA_ALPHA,
        "hyper_parameters": {k: hparams[k] for k in HPARAMS if k in hparams},
    }
    return model.eval(), info


def _fitted(path, model: DenseAVModel, vit, hubert, state) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the file's weights under ``model``'s names, ``model``'s own state) once they match key for
    key and shape for shape."""
    weights = {"image_backbone." + k: v for k, v in _vit_keys(vit).items()}
    expected = set(model.audio_backbone.state_dict())
    weights.update({"audio_backbone." + k: v for k, v in _hubert_keys(hubert, expected).items()})
    weights.update(_aligner_keys(state))
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unused = sorted(set(weights) - set(own))
    misfit = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or unused or misfit:
        raise DenseAVFormatError(
            f"{path}: weights do not fit DenseAV's layout (missing {missing[:3]}, "
            f"unexpected {unused[:3]}, wrong shape {misfit[:3]})"
        )
    return weights, own
