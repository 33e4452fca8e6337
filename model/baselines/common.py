"""What the two baselines share as evaluated models: their config, ``AVModel``'s inference
interface (``encode_image``, ``encode_audio``, ``logit_scale``) and their own retrieval score.

``BaselineModel`` turns a tower's dense tokens into this project's feature layout, one head
(``[B, C, 1, h, w]`` images, ``[B, C, 1, F, T]`` audio), so that ``evaluation.runner.ModelRunner``
and ``ground`` compute DenseAV's quantities for these models unchanged: the volume of Eq. 2 is the
raw dot product of tokens, a heatmap its mean over frequency and masked mean over time.

Retrieval is not Eq. 6 for these models (DenseAV's ``ImageBindAggregator``: CLS . CLS;
``CAVMAEAggregator``: cosine of the mean-pooled tokens), so each clip and image also carries its
retrieval embedding, and ``retrieval_scores`` reads it back. The embedding rides in extra channels
where the other modality's features are zero: an image's embedding spread over its ``h x w``
positions in the channels after the tokens, a clip's over the frequency rows of its first frame in
the channels after those. Every dot product between a clip and an image (volume, heatmaps, maps
in ``ground``) is therefore the tokens' dot product exactly, and the features can be cached, moved
and concatenated like any others.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .fbank import CLIP_SAMPLES, normalized_fbank, windows

MASK_THRESHOLD = 0.01  # DenseAV's interpolate_mask: a token is valid where the resized mask exceeds it


@dataclass
class BaselineConfig:
    """What shapes a baseline network (``sizes``: widths, depths, heads, read off the file's
    shapes by ``model.baselines.convert``) and the fields ``ModelRunner`` reads."""

    name: str  # "imagebind" or "cavmae" (the fbank normalization of model.baselines.fbank.NORMS)
    sizes: dict[str, int] = field(default_factory=dict)
    num_heads: int = 1  # one similarity each: the specialized-head columns of the paper's tables are N/A
    sound_head: int = 0
    speech_head: int = 0
    image_size: int = 224
    clip_samples: int = CLIP_SAMPLES

    def __post_init__(self) -> None:
        if (self.num_heads, self.sound_head, self.speech_head) != (1, 0, 0):
            raise ValueError(f"{self.name} has one similarity head, not {self.num_heads}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def token_mask(mask: torch.Tensor, tokens: int) -> torch.Tensor:
    """DenseAV's ``interpolate_mask`` (discrete): the ``[N, samples]`` mask resized bilinearly to
    ``tokens`` time steps, true above ``MASK_THRESHOLD``."""
    m = F.interpolate(mask.to(torch.float32)[:, None, None, :], (1, tokens), mode="bilinear")
    return m.reshape(mask.shape[0], tokens) > MASK_THRESHOLD


class BaselineModel(nn.Module):
    """A zero-shot dense-token model with ``AVModel``'s inference interface (inference only).

    Subclasses give ``image_tokens`` (ImageNet-normalized images -> tokens ``[B, D, h, w]`` and the
    retrieval embedding ``[B, D]``), ``audio_tokens`` (normalized fbank ``[N, 1024, 128]`` -> tokens
    ``[N, D, F, T]`` and embedding ``[N, D]``), ``retrieval`` (embeddings -> scores) and the
    geometry ``feature_dim``, ``image_grid``, ``audio_rows``.
    """

    feature_dim: int
    image_grid: tuple[int, int]
    audio_rows: int

    def __init__(self, config: BaselineConfig):
        super().__init__()
        self.config = config

    # ------------------------------------------------------------------ to be given by each model

    def image_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def audio_tokens(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def retrieval(self, audio: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ the interface

    def train(self, mode: bool = True) -> "BaselineModel":
        if mode:
            raise ValueError(f"the {self.config.name} baseline is for inference only")
        return super().train(False)

    @property
    def slots(self) -> tuple[int, int]:
        """Channels holding an image's and a clip's retrieval embedding (after the tokens)."""
        h, w = self.image_grid
        return math.ceil(self.feature_dim / (h * w)), math.ceil(self.feature_dim / self.audio_rows)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalized ``[B, 3, S, S]`` (S = ``config.image_size``) -> ``[B, C, 1, h, w]``."""
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(
                f"{self.config.name} takes [B, 3, {size}, {size}] images (its position embedding "
                f"is fixed), got {tuple(images.shape)}"
            )
        tokens, embedding = self.image_tokens(images)
        b, d, h, w = tokens.shape
        image_slot, audio_slot = self.slots
        carried = F.pad(embedding, (0, image_slot * h * w - d)).reshape(b, image_slot, h, w)
        return torch.cat([tokens, carried.to(tokens.dtype), tokens.new_zeros(b, audio_slot, h, w)], 1).unsqueeze(2)

    def encode_audio(self, wave: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz ``[B, L]`` with bool validity ``[B, L]`` -> (``[B, C, 1, F, T]``, bool ``[B, T]``).

        Each window of ``config.clip_samples`` samples (one for L <= 164,200) goes through DenseAV's
        fbank protocol and the audio tower; the token mask is the sample mask resized to the
        window's tokens. As for ``model.denseav.DenseAVModel``, the tokens returned are those that
        start inside the first L samples (93 of 95 ImageBind tokens, 63 of 64 CAV-MAE tokens for a
        10 s clip: the others cover only the padding added here, masked in DenseAV too). The
        retrieval embedding is the windows' mean (for one window: the window's own).
        """
        clips, masks = windows(wave, mask, self.config.clip_samples)
        b, n, samples = clips.shape
        spec = normalized_fbank(clips.reshape(b * n, samples), self.config.name).to(wave.device)
        tokens, embedding = self.audio_tokens(spec.to(self._dtype()))
        _, d, f, t = tokens.shape
        tokens = tokens.reshape(b, n, d, f, t).permute(0, 2, 3, 1, 4).reshape(b, d, f, n * t)
        frame_mask = token_mask(masks.reshape(b * n, samples), t).reshape(b, n * t)
        embedding = embedding.reshape(b, n, d).mean(1)
        keep = math.ceil(wave.shape[1] * t / samples)
        tokens, frame_mask = tokens[..., :keep], frame_mask[:, :keep]
        image_slot, audio_slot = self.slots
        carried = tokens.new_zeros(b, audio_slot, f, keep)
        carried[..., 0] = F.pad(embedding, (0, audio_slot * f - d)).reshape(b, audio_slot, f)
        return torch.cat([tokens, tokens.new_zeros(b, image_slot, f, keep), carried], 1).unsqueeze(2), frame_mask

    def image_embedding(self, v: torch.Tensor) -> torch.Tensor:
        """The retrieval embedding ``[B, D]`` an ``encode_image`` output carries."""
        d, (image_slot, _) = self.feature_dim, self.slots
        return v[:, d : d + image_slot, 0].flatten(1)[:, :d]

    def audio_embedding(self, a: torch.Tensor) -> torch.Tensor:
        """The retrieval embedding ``[B, D]`` an ``encode_audio`` output carries."""
        d, (image_slot, _) = self.feature_dim, self.slots
        return a[:, d + image_slot :, 0, :, 0].flatten(1)[:, :d]

    def retrieval_scores(self, a: torch.Tensor, frame_mask: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The ``[Ba, Bv]`` score matrix this model retrieves with (in place of Eq. 6's ``s_N``);
        the frame mask plays no part (DenseAV pools every token, padding included)."""
        return self.retrieval(self.audio_embedding(a).float(), self.image_embedding(v).float())

    def logit_scale(self) -> torch.Tensor:
        """No calibration: the baselines' similarities are used as they come (1)."""
        return torch.ones((), device=self._device())

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _device(self) -> torch.device:
        return next(self.parameters()).device
