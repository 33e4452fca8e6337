"""``build_model(config)``: backbones from the hub (``pretrained``) or from configs, then ``AVModel``."""

from __future__ import annotations

from typing import Any

from transformers import HubertConfig, HubertModel, PreTrainedModel, ViTConfig, ViTModel

from .config import ModelConfig
from .encoders import AudioEncoder, ChannelsLastFeatureEncoder, ImageEncoder
from .network import AVModel


def _audio_overrides(config: ModelConfig) -> dict[str, Any]:
    overrides: dict[str, Any] = {"layerdrop": config.audio_layerdrop, "apply_spec_augment": config.audio_spec_augment}
    if config.audio_layer_norm_eps is not None:
        overrides["layer_norm_eps"] = config.audio_layer_norm_eps
    return overrides


def _enable_checkpointing(backbone: PreTrainedModel) -> None:
    """Non-reentrant checkpointing of every layer of ``backbone``: the reentrant kind gives no
    gradient to LoRA adapters inside a frozen ViT (its inputs need no gradient) and breaks
    torch.compile's graphs."""
    enable = getattr(backbone, "activation_checkpointing_enable", None)  # transformers >= 5.x
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _checkpoint_backbones(choice: str, image: ViTModel, audio: HubertModel) -> None:
    """``ModelConfig.gradient_checkpointing``: which layers recompute their activations in backward."""
    if choice == "off":
        return
    _enable_checkpointing(audio)
    if choice == "all":
        _enable_checkpointing(image)
    if choice == "front_end":  # keep the transformer layers' activations
        audio.encoder.gradient_checkpointing = False
        for layer in audio.encoder.layers:
            layer.gradient_checkpointing = False


def build_backbones(config: ModelConfig) -> tuple[ViTModel, HubertModel]:
    attn = {"attn_implementation": config.attn_implementation}
    if config.pretrained:
        # Downloads on first use (or reads the local Hugging Face cache).
        image = ViTModel.from_pretrained(config.image_model_id, add_pooling_layer=False, **attn)
        audio = HubertModel.from_pretrained(config.audio_model_id, **_audio_overrides(config), **attn)
    else:
        image = ViTModel(ViTConfig(**{**config.image_backbone, **attn}), add_pooling_layer=False)
        audio = HubertModel(HubertConfig(**{**config.audio_backbone, **_audio_overrides(config), **attn}))
    if config.audio_channels_last:
        audio.feature_extractor = ChannelsLastFeatureEncoder(audio.feature_extractor)
    if config.freeze_feature_encoder:
        audio.feature_extractor._freeze_parameters()  # also stops it from asking for an input gradient
    _checkpoint_backbones(config.gradient_checkpointing, image, audio)
    return image, audio


def build_model(config: ModelConfig) -> AVModel:
    """The network for ``config``, in the ``warmup`` stage (call ``set_stage("full")`` after it)."""
    image, audio = build_backbones(config)
    image_encoder = ImageEncoder(
        image,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        lora_targets=config.lora_targets,
    )
    audio_encoder = AudioEncoder(audio, normalize=config.normalize_waveform)
    return AVModel(config, image_encoder, audio_encoder)


def compile_encoders(model: AVModel) -> AVModel:
    """``torch.compile`` both backbones in place with ``config.compile_encoders``' mode.

    Applied by the trainer and the benchmark, not by ``build_model``: evaluation feeds clips of
    every length, each a recompile of a static-shape graph. Only the transformers modules are
    compiled; the wrappers' input checks (host reads) stay outside the graphs. ``dynamic=False``:
    training shapes are fixed (padded batches, 10 s clips), one graph per stage and padding case.
    Module.compile keeps parameter names, so checkpoints are unchanged.
    """
    mode = model.config.compile_encoders
    if mode != "off":
        # transformers' front end marks its input as needing a gradient in training (for reentrant
        # checkpointing, unused here): a graph break, and an input gradient nobody reads.
        model.audio_encoder.backbone.feature_extractor._requires_grad = False
        model.image_encoder.backbone.compile(mode=mode, dynamic=False)
        model.audio_encoder.backbone.compile(mode=mode, dynamic=False)
    return model
