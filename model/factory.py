"""``build_model(config)``: backbones from the hub (``pretrained``) or from configs, then ``AVModel``."""

from __future__ import annotations

from typing import Any

from transformers import HubertConfig, HubertModel, ViTConfig, ViTModel

from .config import ModelConfig
from .encoders import AudioEncoder, ChannelsLastFeatureEncoder, ImageEncoder
from .network import AVModel


def _audio_overrides(config: ModelConfig) -> dict[str, Any]:
    overrides: dict[str, Any] = {"layerdrop": config.audio_layerdrop, "apply_spec_augment": config.audio_spec_augment}
    if config.audio_layer_norm_eps is not None:
        overrides["layer_norm_eps"] = config.audio_layer_norm_eps
    return overrides


def build_backbones(config: ModelConfig) -> tuple[ViTModel, HubertModel]:
    if config.pretrained:
        # Downloads on first use (or reads the local Hugging Face cache).
        image = ViTModel.from_pretrained(config.image_model_id, add_pooling_layer=False)
        audio = HubertModel.from_pretrained(config.audio_model_id, **_audio_overrides(config))
    else:
        image = ViTModel(ViTConfig(**config.image_backbone), add_pooling_layer=False)
        audio = HubertModel(HubertConfig(**{**config.audio_backbone, **_audio_overrides(config)}))
    if config.audio_channels_last:
        audio.feature_extractor = ChannelsLastFeatureEncoder(audio.feature_extractor)
    if config.gradient_checkpointing:
        audio.gradient_checkpointing_enable()
        image.gradient_checkpointing_enable()
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
