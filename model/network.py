"""``AVModel``: encoders + aligners + temperature, and which of them train in each stage.

``model(batch)`` encodes a training batch (the loader's dict) into the features the objective
(``model.loss``) consumes. Going through ``forward`` matters under DistributedDataParallel, which
only synchronizes gradients of computations that start in the wrapped module's forward.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .aligners import AudioAligner, ImageAligner
from .config import DEFAULT_TYPES, MIXTURE, STAGES, ModelConfig
from .encoders import AudioEncoder, ImageEncoder


def batch_types(batch: dict) -> tuple[str, ...]:
    """The audio types of a training batch (``batch["types"]``, else ``DEFAULT_TYPES``), sorted.

    Sorted, so that the features and the objective's random draws do not depend on the order in
    which a config lists the types; for K = 2 this is the order the two-stream path always had
    (sound, then speech).
    """
    return tuple(sorted(batch.get("types") or DEFAULT_TYPES))


class AVModel(nn.Module):
    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, audio_encoder: AudioEncoder):
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.audio_encoder = audio_encoder
        self.image_aligner = ImageAligner(
            image_encoder.out_channels, config.code_dim, config.num_heads, config.norm_eps
        )
        self.audio_aligner = AudioAligner(
            audio_encoder.out_channels,
            config.code_dim,
            config.num_heads,
            config.audio_pool,
            self_attention=config.audio_self_attention,
            attention_heads=config.audio_attention_heads,
            norm_eps=config.norm_eps,
        )
        # theta of w = clamp(exp(theta), min, max)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale_init)))
        self.frozen: frozenset[str] = frozenset()  # backbones frozen in every stage (``freeze``)
        self.stage = "warmup"
        self.set_stage("warmup")

    # ------------------------------------------------------------------ encoding

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalized ``[B, 3, H, W]`` -> ``[B, C, K, h, w]``.

        In training mode the map is average-pooled by ``config.image_train_pool`` (DenseAV).
        """
        pool = self.config.image_train_pool if self.training else 1
        return self.image_aligner(self.image_encoder(images), pool=pool)

    def encode_audio(self, wave: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz ``[B, L]`` with bool validity ``[B, L]`` -> (``[B, C, K, F, T]``, bool ``[B, T]``)."""
        feats = self.audio_encoder(wave, mask)
        frame_mask = self.frame_mask_from_samples(mask)
        expected = self.audio_aligner.output_frames(feats.shape[-1])
        if frame_mask.shape[1] != expected:  # the two length computations must agree
            raise RuntimeError(f"frame mask has {frame_mask.shape[1]} frames, features {expected}")
        return self.audio_aligner(feats, frame_mask), frame_mask

    def frame_mask_from_samples(self, mask: torch.Tensor) -> torch.Tensor:
        """Sample-level bool ``[B, L]`` -> frame-level bool ``[B, T]`` of the aligned audio features.

        Follows the backbone's convolution stack and the aligner's pooling; a frame is True when at
        least ``config.frame_valid_fraction`` of the samples it covers are True. Works for padding
        masks and for splice masks alike.
        """
        if mask.dim() != 2:
            raise ValueError(f"mask must be [B, L], got {tuple(mask.shape)}")
        x = mask.to(torch.float32).unsqueeze(1)
        for kernel, stride in self.audio_encoder.frame_pools:
            if x.shape[-1] < kernel:
                raise ValueError(f"audio of {mask.shape[1]} samples is too short for the audio encoder")
            x = nn.functional.avg_pool1d(x, kernel, stride)
        for width in self.audio_aligner.pool:
            if x.shape[-1] < width:
                raise ValueError(f"audio of {mask.shape[1]} samples is too short for the audio aligner")
            x = nn.functional.avg_pool1d(x, width, width)
        # The small tolerance keeps exactly-half frames on the valid side despite rounding.
        return x.squeeze(1) >= self.config.frame_valid_fraction - 1e-6

    def forward(self, batch: dict, include_mix: bool = True) -> dict:
        """Encode a training batch (keys of ``docs/architecture.md``) into the objective's features.

        For every audio type ``t`` of ``batch["types"]`` (``sound`` and ``speech`` when the batch
        names none): ``t_audio`` ``[B, C, K, F, T]`` with its frame mask ``t_mask`` ``[B, T]`` and
        ``t_image`` ``[B, C, K, h, w]``; where the batch has them, ``t_splice`` as a frame mask
        ``[B, T]`` and ``t_image_foreign`` (from ``make_mosaic``) as the foreign share of each feature
        cell ``[B, h, w]``; and the mixture's ``mix_audio`` / ``mix_mask``. ``include_mix=False``
        skips the mixture (the warm-up uses L_cor only).
        """
        feats: dict[str, torch.Tensor] = {}
        types = batch_types(batch)
        kinds = (*types, MIXTURE) if include_mix else types
        # One backbone call per modality for all streams: every layer is per-sample, so this is
        # the same computation with a fraction of the kernel launches and weight casts.
        audio, frame_mask = self.encode_audio(
            torch.cat([batch[f"{k}_audio"] for k in kinds]), torch.cat([batch[f"{k}_mask"] for k in kinds])
        )
        for kind, a, m in zip(kinds, audio.chunk(len(kinds)), frame_mask.chunk(len(kinds))):
            feats[f"{kind}_audio"], feats[f"{kind}_mask"] = a, m
        images = self.encode_image(torch.cat([batch[f"{t}_image"] for t in types]))
        for kind, v in zip(types, images.chunk(len(types))):
            feats[f"{kind}_image"] = v
            if f"{kind}_splice" in batch:
                feats[f"{kind}_splice"] = self.frame_mask_from_samples(batch[f"{kind}_splice"])
            foreign = batch.get(f"{kind}_image_foreign")
            if foreign is not None:
                cells = nn.functional.adaptive_avg_pool2d(foreign.to(v.dtype).unsqueeze(1), v.shape[-2:])
                feats[f"{kind}_image_foreign"] = cells.squeeze(1)
        return feats

    # ------------------------------------------------------------------ temperature and stages

    def logit_scale(self) -> torch.Tensor:
        """The InfoNCE temperature w = clamp(exp(theta), 0.01, 100); logits = w * scores."""
        return self.log_logit_scale.exp().clamp(self.config.logit_scale_min, self.config.logit_scale_max)

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        """Parameters trained in ``stage``: ``warmup`` = aligners + temperature; ``full`` = those +
        the image LoRA adapters + all of HuBERT, less the backbones ``freeze`` named. The ViT's own
        weights never train.

        HuBERT's SpecAugment embedding is left out when SpecAugment is off: it would get no
        gradient, which DistributedDataParallel rejects; so is its conv front end under
        ``freeze_feature_encoder``.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        params = [*self.image_aligner.parameters(), *self.audio_aligner.parameters(), self.log_logit_scale]
        if stage == "full" and "image" not in self.frozen:
            params += self.image_encoder.lora_parameters()
        if stage == "full" and "audio" not in self.frozen:
            for name, p in self.audio_encoder.backbone.named_parameters():
                if name == "masked_spec_embed" and not self.config.audio_spec_augment:
                    continue
                if name.startswith("feature_extractor.") and self.config.freeze_feature_encoder:
                    continue
                params.append(p)
        return params

    def freeze(self, parts) -> "AVModel":
        """Keep the backbones named in ``parts`` (``audio``: HuBERT; ``image``: the ViT's LoRA
        adapters) frozen in the full stage too, and in eval mode as in the warm-up (fine-tuning on a
        small corpus: ``training.config``'s ``freeze``)."""
        unknown = sorted(set(parts) - {"audio", "image"})
        if unknown:
            raise ValueError(f"freeze: unknown backbones {unknown}; name audio and/or image")
        self.frozen = frozenset(parts)
        return self.set_stage(self.stage)

    def set_stage(self, stage: str) -> "AVModel":
        trainable = {id(p) for p in self.stage_parameters(stage)}
        for p in self.parameters():
            p.requires_grad_(id(p) in trainable)
        self.stage = stage
        self.train(self.training)
        return self

    def train(self, mode: bool = True) -> "AVModel":
        super().train(mode)
        # Frozen backbones run deterministically (no dropout) while only the aligners learn.
        frozen = {"image", "audio"} if self.stage == "warmup" else self.frozen
        if "image" in frozen:
            self.image_encoder.eval()
        if "audio" in frozen:
            self.audio_encoder.eval()
        return self
