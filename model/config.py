"""``ModelConfig``: every choice that shapes the network, in one JSON-serializable dataclass.

Two presets:

* ``paper``: DINO ViT-S/8 + HuBERT Large (Libri-Light), C = 192 channels per head, K = 2 heads,
  LoRA rank 8 on the ViT attention projections, DenseAV's aligners. ``pretrained=True`` loads the
  weights with ``from_pretrained``; ``pretrained=False`` builds the same architecture with random
  weights from the configs below (benchmarks, shape checks; no download).
* ``tiny``: the same structure with a few-MB random backbone (112 px images, 2-layer ViT and HuBERT),
  fast enough on a 2-core CPU for the tests and the built-in demo.

A checkpoint stores this config with the exact backbone configs filled in, so loading it rebuilds the
architecture without any download (see ``model.checkpoint``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.fields import check_fields, checked

from .similarity import SCORE_BACKENDS

# The architecture of the default hub ids, so ``pretrained=False`` builds the paper's network from
# configs alone. Values follow the published configs of facebook/dino-vits8 and
# facebook/hubert-large-ll60k.
DINO_VITS8 = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    intermediate_size=1536,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    layer_norm_eps=1e-12,
    image_size=224,
    patch_size=8,
    num_channels=3,
    qkv_bias=True,
)
HUBERT_LARGE = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    hidden_act="gelu",
    hidden_dropout=0.1,
    attention_dropout=0.1,
    activation_dropout=0.0,
    feat_proj_dropout=0.1,
    layer_norm_eps=1e-5,
    feat_extract_norm="layer",
    feat_extract_activation="gelu",
    do_stable_layer_norm=True,
    conv_dim=[512] * 7,
    conv_stride=[5, 2, 2, 2, 2, 2, 2],
    conv_kernel=[10, 3, 3, 3, 3, 2, 2],
    conv_bias=True,
    num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
    mask_time_prob=0.05,
)
TINY_VIT = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    layer_norm_eps=1e-6,
    image_size=112,
    patch_size=8,
    num_channels=3,
    qkv_bias=True,
)
TINY_HUBERT = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    hidden_act="gelu",
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    layer_norm_eps=1e-5,
    feat_extract_norm="layer",
    feat_extract_activation="gelu",
    do_stable_layer_norm=True,
    # Same strides as HuBERT (320-sample hop, 50 Hz frames), narrow channels.
    conv_dim=[16] * 7,
    conv_stride=[5, 2, 2, 2, 2, 2, 2],
    conv_kernel=[10, 3, 3, 3, 3, 2, 2],
    conv_bias=True,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    mask_time_prob=0.0,
)

STAGES = ("warmup", "full")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
CHECKPOINTING = ("off", "front_end", "audio", "all")
COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs")
PRESETS = ("paper", "tiny")  # the names ModelConfig.preset knows


@dataclass
class ModelConfig:
    name: str = "paper"
    # Backbones. pretrained=True: architecture and weights from the hub ids (image_backbone and
    # audio_backbone are then unused). pretrained=False: random weights, architecture from
    # image_backbone / audio_backbone, keyword arguments of transformers' ViTConfig / HubertConfig.
    # The audio_* overrides further down apply in both cases.
    pretrained: bool = True
    image_model_id: str = "facebook/dino-vits8"
    audio_model_id: str = "facebook/hubert-large-ll60k"
    image_backbone: dict[str, Any] = field(default_factory=lambda: dict(DINO_VITS8))
    audio_backbone: dict[str, Any] = field(default_factory=lambda: dict(HUBERT_LARGE))
    image_size: int = checked(224, ge=1)  # input resolution the loader should produce
    # Shared feature space: C channels per head, K heads.
    code_dim: int = checked(192, ge=1)
    num_heads: int = checked(2, ge=1)
    sound_head: int = checked(0, ge=0)  # < num_heads
    speech_head: int = checked(1, ge=0)  # < num_heads, and not the sound head when there are several
    # LoRA on the image backbone's attention projections (DenseAV: alpha 32, dropout 0.1).
    lora_rank: int = checked(8, ge=0)
    lora_alpha: float = checked(32.0, gt=0)
    lora_dropout: float = checked(0.1, ge=0, lt=1)
    lora_targets: list[str] | None = None  # None: the q/k/v projections found in the module tree
    # Aligners (DenseAV): channel-norm + 1x1 conv for images; channel-norm + stride-w convs along
    # time for audio, then an optional self-attention block with a learned CLS token.
    norm_eps: float = checked(1e-4, gt=0)
    audio_pool: list[int] = checked(factory=lambda: [3, 3], ge=1, nonempty=True)
    audio_self_attention: bool = True
    audio_attention_heads: int = checked(6, ge=1)  # divides code_dim * num_heads
    # DenseAV average-pools the aligned image features 2x2 while training (28x28 -> 14x14 at 224 px
    # with patch 8) to cut the cost of the B x B score matrix; evaluation keeps full resolution.
    image_train_pool: int = checked(2, ge=1)
    # Audio input handling.
    normalize_waveform: bool = True  # zero mean / unit variance over the valid samples, as HuBERT's extractor
    # a frame is valid when at least this share of its samples is
    frame_valid_fraction: float = checked(0.5, gt=0, le=1)
    # Overrides applied to the audio backbone config. LayerDrop leaves layers without gradient,
    # which DistributedDataParallel rejects; SpecAugment is off as in DenseAV's recipe.
    audio_layerdrop: float = checked(0.0, ge=0, le=1)
    audio_spec_augment: bool = False
    audio_layer_norm_eps: float | None = checked(1e-4, gt=0)  # DenseAV raises HuBERT's eps for half precision
    # Attention kernel of both backbones (transformers' attn_implementation). "sdpa" is PyTorch's
    # scaled_dot_product_attention: the same function as "eager" (tested, padding masks included),
    # without the [heads, T, T] probabilities kept for backward, and FlashAttention-2 / memory-efficient
    # kernels on a GPU. transformers' "flash_attention_2" needs the flash-attn package or a kernel
    # downloaded from the hub, so it is not offered.
    attn_implementation: str = checked("sdpa", choices=ATTN_IMPLEMENTATIONS)
    # Activation checkpointing (recompute in backward instead of keeping activations): "off";
    # "front_end": HuBERT's conv front end only -- at 16 kHz its per-layer activations are the
    # model's largest tensors, for a small share of its FLOPs; "audio": all of HuBERT (front end and
    # transformer layers); "all": HuBERT and the ViT. For batches that do not fit otherwise.
    gradient_checkpointing: str = checked("off", choices=CHECKPOINTING)
    # HuBERT's layer-norm conv front end in channels-last layout (model.encoders.ChannelsLastFeatureEncoder):
    # the same function without its per-layer transposes; off until measured on a GPU
    audio_channels_last: bool = False
    # HuBERT's conv front end frozen (wav2vec2 fine-tuning's usual choice): no gradients and no backward
    # through it. The paper fine-tunes all of HuBERT, so the paper preset keeps it off.
    freeze_feature_encoder: bool = False
    # torch.compile of both backbones: "off", or a torch.compile mode. 10 s clips and fixed image
    # sizes give static shapes; CUDA-graph modes ("reduce-overhead") are not offered, since the
    # padding mask's presence changes between steps and the backward runs outside the graph.
    compile_encoders: str = checked("off", choices=COMPILE_MODES)
    # Implementation of the B x B score matrices of the loss (model.similarity.SCORE_BACKENDS): "auto"
    # runs the fused Triton kernels on CUDA and the blocked torch computation elsewhere; all give
    # the same scores and gradients.
    score_backend: str = checked("auto", choices=SCORE_BACKENDS)
    # Temperature w = clamp(exp(theta), min, max), theta initialized to log(init); min <= init <= max.
    logit_scale_init: float = checked(1.0, gt=0)
    logit_scale_min: float = checked(0.01, gt=0)
    logit_scale_max: float = checked(100.0, gt=0)

    def __post_init__(self) -> None:
        # Configs written before the checkpointing choices had a bool: True meant everything.
        if isinstance(self.gradient_checkpointing, bool):
            self.gradient_checkpointing = "all" if self.gradient_checkpointing else "off"
        check_fields(self)  # each field on its own (the declarations above); then the fields together
        for name in ("sound_head", "speech_head"):
            head = getattr(self, name)
            if not 0 <= head < self.num_heads:
                raise ValueError(f"{name}={head} is outside 0..{self.num_heads - 1}")
        if self.num_heads > 1 and self.sound_head == self.speech_head:
            raise ValueError("sound_head and speech_head must differ when there are several heads")
        if self.audio_self_attention and (self.code_dim * self.num_heads) % self.audio_attention_heads:
            raise ValueError(
                f"audio_attention_heads={self.audio_attention_heads} must divide "
                f"code_dim * num_heads = {self.code_dim * self.num_heads}"
            )
        if not self.logit_scale_min <= self.logit_scale_init <= self.logit_scale_max:
            raise ValueError(
                f"need logit_scale_min <= logit_scale_init <= logit_scale_max, got "
                f"{self.logit_scale_min}, {self.logit_scale_init}, {self.logit_scale_max}"
            )
        # JSON has lists, not tuples: normalize so a round trip compares equal.
        self.audio_pool = [int(w) for w in self.audio_pool]
        if self.lora_targets is not None:
            self.lora_targets = [str(t) for t in self.lora_targets]

    @property
    def channels(self) -> int:
        """Aligner output channels, C * K."""
        return self.code_dim * self.num_heads

    # ------------------------------------------------------------------ presets and serialization

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        if name == "paper":
            base: dict[str, Any] = {}
        elif name == "tiny":
            base = dict(
                name="tiny",
                pretrained=False,
                image_backbone=dict(TINY_VIT),
                audio_backbone=dict(TINY_HUBERT),
                image_size=112,
                code_dim=32,
                audio_attention_heads=4,
                image_train_pool=1,
                lora_dropout=0.0,  # deterministic steps: the tests overfit one batch
            )
        else:
            raise ValueError(f"unknown model preset {name!r}; known: 'paper', 'tiny'")
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {unknown}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))
