"""Backbone wrappers: a DINO ViT with LoRA for images, HuBERT on raw 16 kHz audio.

Each wrapper turns a transformers model into a dense feature map and nothing more; the aligners
(``model.aligners``) map those features into the shared space.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

# Attention projection leaf names across transformers versions: 5.x uses q_proj/k_proj/v_proj,
# 4.x used query/key/value.
PROJECTION_NAMES = ("q_proj", "k_proj", "v_proj", "query", "key", "value")


def attention_projection_names(model: nn.Module) -> list[str]:
    """The leaf names of the linear q/k/v projections inside ``model``'s attention blocks."""
    found = set()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in PROJECTION_NAMES and isinstance(module, nn.Linear) and "attention" in name:
            found.add(leaf)
    if not found:
        raise ValueError(
            f"no attention projections named any of {PROJECTION_NAMES} found in {type(model).__name__}; "
            "set ModelConfig.lora_targets"
        )
    return sorted(found)


def _needs_grad(module: nn.Module) -> bool:
    return torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())


class ImageEncoder(nn.Module):
    """ViT patch tokens (after the final LayerNorm) as a feature map ``[B, D, H/p, W/p]``.

    The backbone's own weights stay frozen (``AVModel.set_stage``); LoRA adapters (peft) on the
    attention projections are what fine-tunes it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        lora_rank: int = 8,
        lora_alpha: float = 32.0,
        lora_dropout: float = 0.1,
        lora_targets: list[str] | None = None,
    ):
        super().__init__()
        config = backbone.config
        if lora_rank > 0:
            targets = list(lora_targets) if lora_targets else attention_projection_names(backbone)
            lora = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets)
            backbone = inject_adapter_in_model(lora, backbone)
        self.backbone = backbone
        self.patch_size = int(config.patch_size)
        size = config.image_size
        self.image_size = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
        self.out_channels = int(config.hidden_size)

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.backbone.named_parameters() if "lora_" in n]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        b, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        # A frozen backbone (warm-up) needs no activations kept for backward.
        with torch.set_grad_enabled(_needs_grad(self.backbone)):
            out = self.backbone(
                pixel_values=images,
                interpolate_pos_encoding=(height, width) != self.image_size,
            )
        tokens = out.last_hidden_state[:, 1:]  # drop CLS
        h, w = height // self.patch_size, width // self.patch_size
        return tokens.transpose(1, 2).reshape(b, self.out_channels, h, w)


def normalize_waveform(wave: torch.Tensor, mask: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Zero mean, unit variance over each clip's valid samples; invalid samples set to 0.

    This is what HuBERT's feature extractor does (``do_normalize``), restricted to real audio so
    padding does not shift the statistics.
    """
    m = mask.to(wave.dtype)
    n = m.sum(1, keepdim=True).clamp_min(1.0)
    mean = (wave * m).sum(1, keepdim=True) / n
    var = ((wave - mean) * m).square().sum(1, keepdim=True) / n
    return (wave - mean) / torch.sqrt(var + eps) * m


def prefix_mask(mask: torch.Tensor) -> torch.Tensor:
    """Everything up to each row's last valid sample.

    transformers derives frame-level attention masks from the *count* of valid samples, which is
    only right for trailing padding; masked holes inside a clip (zeroed spans) stay visible to the
    backbone as silence and are dropped later through the frame mask.
    """
    length = mask.shape[1]
    index = torch.arange(1, length + 1, device=mask.device)
    last = (mask.long() * index).amax(1, keepdim=True)
    return index.unsqueeze(0) <= last


class ChannelsLastFeatureEncoder(nn.Module):
    """HuBERT's layer-normed conv front end computed in ``[B, T, C]`` layout, same parameters.

    transformers' version runs each conv in ``[B, C, T]`` and transposes to ``[B, T, C]`` and back
    around every LayerNorm; at 16 kHz the first layers' activations are the largest tensors of
    the model, and those transposes are copies. Here each conv runs as a 2-D convolution on a
    channels-last tensor (cuDNN's native layout for bf16 tensor cores), whose memory already is
    ``[B, T, C]``: LayerNorm, GELU and the encoder's final transpose then touch contiguous data.
    Holds the same ``conv_layers`` modules, so state-dict keys and checkpoints are unchanged.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        if type(encoder.conv_layers[0]).__name__ != "HubertLayerNormConvLayer":
            raise ValueError(
                "the channels-last front end needs a layer-norm conv feature extractor (feat_extract_norm='layer')"
            )
        self.conv_layers = encoder.conv_layers
        self._requires_grad = True
        # set by transformers' activation checkpointing, as on the front end this one replaces
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = None

    def _freeze_parameters(self):  # what transformers' freeze_feature_encoder calls
        for param in self.parameters():
            param.requires_grad = False
        self._requires_grad = False

    @staticmethod
    def _layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        conv = layer.conv
        x = nn.functional.conv2d(
            x.contiguous(memory_format=torch.channels_last),
            conv.weight.unsqueeze(2),
            conv.bias,
            stride=(1, conv.stride[0]),
        )
        t = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)  # [B, 1, T, C], contiguous
        return layer.activation(layer.layer_norm(t)).permute(0, 3, 1, 2)  # back to [B, C, 1, T], a view

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        x = input_values[:, None, None, :]  # [B, 1, 1, L]
        recompute = self.gradient_checkpointing and self.training and _needs_grad(self)
        for layer in self.conv_layers:
            x = self._gradient_checkpointing_func(self._layer, layer, x) if recompute else self._layer(layer, x)
        return x.squeeze(2)  # [B, C, T] whose memory is [B, T, C]


class AudioEncoder(nn.Module):
    """HuBERT's last hidden state as ``[B, D, 1, T]`` (one frequency bin, 50 Hz frames)."""

    def __init__(self, backbone: nn.Module, *, normalize: bool = True):
        super().__init__()
        config = backbone.config
        self.backbone = backbone
        self.normalize = normalize
        self.out_channels = int(config.hidden_size)
        # Layer-norm feature extractors were trained with padding masks; group-norm ones were not
        # and expect plain zero padding (transformers' guidance for wav2vec2-style models).
        self.use_attention_mask = config.feat_extract_norm == "layer"
        self.frame_pools = list(zip(config.conv_kernel, config.conv_stride))

    def forward(self, wave: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"wave must be [B, L], got {tuple(wave.shape)}")
        if mask.shape != wave.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool with the shape of wave {tuple(wave.shape)}, got {mask.dtype} {tuple(mask.shape)}"
            )
        keep = prefix_mask(mask)
        # one host sync for both questions (the mask usually lives on the GPU)
        all_nonempty, unpadded = torch.stack([mask.any(1).all(), keep.all()]).tolist()
        if not all_nonempty:
            raise ValueError(f"clips {(~mask.any(1)).nonzero().flatten().tolist()} have no valid samples")
        x = normalize_waveform(wave, mask) if self.normalize else wave * mask.to(wave.dtype)
        # Without padding no mask is passed: SDPA can then pick its FlashAttention kernel.
        attention = keep.long() if self.use_attention_mask and not unpadded else None
        with torch.set_grad_enabled(_needs_grad(self.backbone)):
            out = self.backbone(input_values=x, attention_mask=attention)
        return out.last_hidden_state.transpose(1, 2).unsqueeze(2)
