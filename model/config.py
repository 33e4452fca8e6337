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

The heads are named by audio type (``head_types``: head k answers type ``head_types[k]``, the
typed streams); ``resolve_heads`` derives it from ``num_heads`` / ``sound_head`` /
``speech_head`` for configs that name only those (every config written before it), and them from it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.fields import check_fields, checked
from pipeline.format import AUDIO_TYPE_RE

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
DEFAULT_TYPES = ("sound", "speech")  # the types of a batch or objective that names none (K = 2)
MIXTURE = "mix"  # the batch keys of the mixture (mix_audio, mix_mask): no type may take the name
HEAD_FIELDS = ("head_types", "num_heads", "sound_head", "speech_head")  # each derived from the others
ONE_HEAD = "audio"  # the name of a one-head model's head, which answers every audio type


def resolve_heads(
    head_types: list[str] | None, num_heads: int | None, sound_head: int | None, speech_head: int | None
) -> tuple[list[str], int, int | None, int | None]:
    """``(head_types, num_heads, sound_head, speech_head)`` with what was left out (None) derived
    from what was given, or ``ValueError`` where they disagree.

    Without ``head_types`` the heads are today's two-head configuration: K = num_heads (2), the
    sound head N = sound_head (0), the speech head N' = speech_head (1), any further head named
    ``head<k>``. With ``head_types``, K is its length and sound_head / speech_head are the indices
    of ``sound`` / ``speech`` (None where the model has no such head). A one-head model's only
    head (``ONE_HEAD`` unless named) answers every type: sound_head = speech_head = 0.
    """
    if head_types is None:
        k = 2 if num_heads is None else num_heads
        sound = 0 if sound_head is None else sound_head
        speech = (1 if k > 1 else 0) if speech_head is None else speech_head
        for name, head in (("sound_head", sound), ("speech_head", speech)):
            if not 0 <= head < k:
                raise ValueError(f"{name}={head} is outside 0..{k - 1}")
        if k == 1:
            return [ONE_HEAD], 1, 0, 0
        if sound == speech:
            raise ValueError("sound_head and speech_head must differ when there are several heads")
        names = [f"head{i}" for i in range(k)]
        names[sound], names[speech] = "sound", "speech"
        return names, k, sound, speech
    names = [str(t) for t in head_types]  # (OmegaConf and JSON lists as plain strings)
    if not names:
        raise ValueError("head_types must name at least one head")
    for name in names:
        if not AUDIO_TYPE_RE.fullmatch(name) or name == MIXTURE:
            raise ValueError(
                f"head_types: {name!r} is not an audio type name (a lower-case letter, then letters, digits or _; "
                f"not {MIXTURE!r}, the mixture's name)"
            )
    repeated = sorted({t for t in names if names.count(t) > 1})
    if repeated:
        raise ValueError(f"head_types names {repeated} more than once: each head answers its own type")
    k = len(names)
    if num_heads is not None and num_heads != k:
        raise ValueError(f"num_heads={num_heads} but head_types {names} names {k} heads; leave num_heads out")
    if k == 1:
        for name, head in (("sound_head", sound_head), ("speech_head", speech_head)):
            if head not in (None, 0):
                raise ValueError(f"{name}={head} is outside 0..0")
        return names, 1, 0, 0
    resolved = []
    for audio_type, head in (("sound", sound_head), ("speech", speech_head)):
        own = names.index(audio_type) if audio_type in names else None
        if head is not None and head != own:
            where = f"on head {own}" if own is not None else "on no head"
            raise ValueError(f"{audio_type}_head={head} but head_types {names} puts {audio_type!r} {where}")
        resolved.append(own)
    return names, k, resolved[0], resolved[1]


def head_index(head_types: list[str], audio_type: str) -> int:
    """The head that answers ``audio_type``; a one-head model's only head answers every type."""
    if len(head_types) == 1:
        return 0
    if audio_type not in head_types:
        raise ValueError(f"no head answers the audio type {audio_type!r}: the heads answer {list(head_types)}")
    return list(head_types).index(audio_type)


def head_types_of(config: Any) -> list[str]:
    """The audio type of each head of any model's config: ``ModelConfig.head_types``, else derived
    from ``num_heads`` / ``sound_head`` / ``speech_head`` (DenseAV's and the baselines' configs)."""
    names = getattr(config, "head_types", None)
    if names:
        return list(names)
    return resolve_heads(None, int(config.num_heads), int(config.sound_head), int(config.speech_head))[0]


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
    # Shared feature space: C channels per head, K heads. Head k answers the audio type
    # head_types[k] (its L_dis term, Eq. 9); the training data's stream types must be these.
    # Left out (None), each is derived from the others (resolve_heads): head_types from num_heads,
    # sound_head and speech_head (today's two-head configs: ["sound", "speech"]); num_heads,
    # sound_head and speech_head from head_types (the index of "sound"/"speech", None without one).
    code_dim: int = checked(192, ge=1)
    num_heads: int | None = checked(None, ge=1)  # == len(head_types); 2 when nothing names the heads
    sound_head: int | None = checked(None, ge=0)  # < num_heads (the paper's N)
    speech_head: int | None = checked(None, ge=0)  # < num_heads, not the sound head when there are several (N')
    head_types: list[str] | None = None
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
        self.head_types, self.num_heads, self.sound_head, self.speech_head = resolve_heads(
            self.head_types, self.num_heads, self.sound_head, self.speech_head
        )
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

    def head_of(self, audio_type: str) -> int:
        """The head that answers ``audio_type`` (``head_types.index``); a one-head model's only head
        answers every type."""
        return head_index(self.head_types, audio_type)

    def name_head(self, audio_type: str, head: int) -> None:
        """Make ``head`` the one that answers ``audio_type``, swapping names with the head that
        answered it (a DenseAV-style model's heads named after the fact, ``model.loading``)."""
        if not 0 <= head < self.num_heads:
            raise ValueError(f"{audio_type}_head {head} is outside 0..{self.num_heads - 1}")
        if self.num_heads == 1:
            return
        names = list(self.head_types)
        if audio_type in names:
            other = names.index(audio_type)
            names[other], names[head] = names[head], audio_type
        else:
            names[head] = audio_type
        self.head_types, self.num_heads, self.sound_head, self.speech_head = resolve_heads(names, None, None, None)

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
