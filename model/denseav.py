"""DenseAV's released models (Hamilton et al., CVPR 2024) as a network with ``AVModel``'s inference interface.

``DenseAVModel`` computes what DenseAV's ``LitAVAligner`` computes in evaluation, in this project's
feature layout (``[B, C, K, h, w]`` images, ``[B, C, K, F, T]`` audio, head-major channels), so that
``evaluation.runner.ModelRunner`` and ``ground`` run it unchanged:

* image: DINO ViT (its own block layout, LayerNorm eps 1e-4, LoRA merged) -> patch tokens after the
  final norm -> ChannelNorm + 1x1 conv (``image_linear``);
* audio: the clip zero-padded to ``clip_samples`` (164,200), zero mean / unit variance over the whole
  padded clip (Wav2Vec2's processor), HuBERT without an attention mask -> mean over frequency ->
  ChannelNorm -> two width-3 stride-3 convs (the first also maps the learned audio CLS) -> one
  self-attention block over [CLS, frames] (``audio_sa_3_3_pool_2``); the frame mask is DenseAV's
  bilinear interpolation of the sample mask, true above 0.01; frames lying wholly in the padding
  added here are dropped (masked silence in DenseAV, so no score changes);
* with ``use_cls`` DenseAV adds the CLS similarity to every cell of the volume; here that term is
  carried exactly by appending each CLS as extra channels of every feature vector.

``pick_speech_head`` tells the speech head of a two-head model from activations, as Pred.Dis does.
The converter from DenseAV's files is ``model.denseav_convert``; docs/model.md says what matches.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .aligners import SelfAttentionBlock, split_heads

DENSEAV_EPS = 1e-4  # every LayerNorm of DenseAV's aligners and its DINO
ATTENTION_HEADS = 6  # DenseAV's SelfAttentionAligner always uses 6 heads, padding the channels to fit
CLIP_SAMPLES = 164_200  # DenseAV's 10 s target ("result is 1024 after spec")
PROCESSOR_EPS = 1e-7  # Wav2Vec2FeatureExtractor's variance epsilon


@dataclass
class DenseAVConfig:
    """What shapes a DenseAV network; the backbone dicts are transformers' HubertConfig keywords and
    the DINO ViT's sizes, read off the checkpoint's shapes by ``model.denseav_convert``."""

    name: str = "denseav"
    vit: dict[str, Any] = field(default_factory=dict)  # dim, depth, heads, mlp, patch, grid
    hubert: dict[str, Any] = field(default_factory=dict)
    code_dim: int = 384  # all heads together (DenseAV's code_dim)
    num_heads: int = 1
    sound_head: int = 0
    speech_head: int = 0
    use_cls: bool = False
    mask_silence: bool = True
    image_size: int = 224
    clip_samples: int = CLIP_SAMPLES

    def __post_init__(self) -> None:
        if self.num_heads < 1 or self.code_dim % self.num_heads:
            raise ValueError(f"code_dim {self.code_dim} does not split into {self.num_heads} heads")
        for name in ("sound_head", "speech_head"):
            if not 0 <= getattr(self, name) < self.num_heads:
                raise ValueError(f"{name}={getattr(self, name)} is outside 0..{self.num_heads - 1}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


class DinoViT(nn.Module):
    """DINO's ViT (``featurizers/DINO.py`` layout): patch tokens after the final norm, and the CLS."""

    def __init__(self, dim: int, depth: int, heads: int, mlp: int, patch: int, grid: int):
        super().__init__()
        self.patch = patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.ModuleList(SelfAttentionBlock(dim, heads, DENSEAV_EPS) for _ in range(depth))
        for block in self.blocks:
            if mlp != 4 * dim:
                block.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))
        self.norm = nn.LayerNorm(dim, eps=DENSEAV_EPS)

    def positions(self, h: int, w: int) -> torch.Tensor:
        grid = math.isqrt(self.pos_embed.shape[1] - 1)
        if (h, w) == (grid, grid):
            return self.pos_embed
        cls, patches = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patches = patches.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls, patches.flatten(2).transpose(1, 2)], 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, H, W]`` -> (``[B, D, H/p, W/p]``, CLS ``[B, D]``)."""
        b, _, height, width = images.shape
        if height % self.patch or width % self.patch:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {self.patch}")
        h, w = height // self.patch, width // self.patch
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], 1) + self.positions(h, w)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, 1:].transpose(1, 2).reshape(b, -1, h, w), x[:, 0]


class DenseAVModel(nn.Module):
    """DenseAV's backbones, aligners and calibration, with ``encode_image``/``encode_audio``/
    ``logit_scale`` as ``model.network.AVModel`` has them (inference only)."""

    def __init__(self, config: DenseAVConfig):
        super().__init__()
        from transformers import HubertConfig, HubertModel

        self.config = config
        vit, code = config.vit, config.code_dim
        self.image_backbone = DinoViT(vit["dim"], vit["depth"], vit["heads"], vit["mlp"], vit["patch"], vit["grid"])
        self.image_norm = nn.LayerNorm(vit["dim"], eps=DENSEAV_EPS)
        self.image_proj = nn.Conv2d(vit["dim"], code, 1)
        self.image_cls_layer = nn.Linear(vit["dim"], code)
        self.audio_backbone = HubertModel(HubertConfig(**config.hubert))
        audio_dim = self.audio_backbone.config.hidden_size
        self.audio_cls = nn.Parameter(torch.zeros(audio_dim))
        self.audio_norm = nn.LayerNorm(audio_dim, eps=DENSEAV_EPS)
        self.audio_pool1 = nn.Conv2d(audio_dim, code, (1, 3), (1, 3))
        self.audio_cls_layer = nn.Linear(audio_dim, code)
        self.audio_pool2 = nn.Conv2d(code, code, (1, 3), (1, 3))
        self.attention_padding = (-code) % ATTENTION_HEADS
        self.attention = SelfAttentionBlock(code + self.attention_padding, ATTENTION_HEADS, DENSEAV_EPS)
        self.sim_cal_w = nn.Parameter(torch.zeros(1))  # log of the calibration weight w
        self.eval()

    def train(self, mode: bool = True) -> "DenseAVModel":
        if mode:
            raise ValueError("DenseAVModel is for inference; train this project's AVModel instead")
        return super().train(False)

    def _with_cls(self, feats: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """``[B, K*C, ...]`` + CLS ``[B, K*C]`` -> ``[B, C(+C), K, ...]``: with ``use_cls`` each head's
        CLS rides along as C extra channels, so a dot product adds the CLS similarity."""
        k = self.config.num_heads
        x = split_heads(feats, k)
        if not self.config.use_cls:
            return x
        c = split_heads(cls, k)  # [B, C, K]
        c = c.reshape(*c.shape, *([1] * (x.dim() - 3))).expand(*c.shape, *x.shape[3:])
        return torch.cat([x, c], 1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalized ``[B, 3, H, W]`` -> ``[B, C, K, h, w]`` (28 x 28 at 224 px)."""
        feats, cls = self.image_backbone(images)
        x = self.image_proj(self.image_norm(feats.movedim(1, -1)).movedim(-1, 1))
        return self._with_cls(x, self.image_cls_layer(cls))  # DenseAV maps the un-normed CLS

    def prepare_audio(self, wave: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DenseAV's evaluation input: invalid samples zeroed, zero-padded to ``clip_samples`` (longer
        clips are kept whole), then standardized over the whole padded clip."""
        if wave.dim() != 2 or mask.shape != wave.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"need wave [B, L] and a bool mask of its shape, got {tuple(wave.shape)}, "
                f"{mask.dtype} {tuple(mask.shape)}"
            )
        empty = (~mask.any(1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"clips {empty} have no valid samples")
        pad = max(0, self.config.clip_samples - wave.shape[1])
        wave = F.pad(wave * mask.to(wave.dtype), (0, pad))
        mask = F.pad(mask, (0, pad))
        mean = wave.mean(1, keepdim=True)
        var = (wave - mean).square().mean(1, keepdim=True)
        return (wave - mean) / torch.sqrt(var + PROCESSOR_EPS), mask

    def frame_mask(self, mask: torch.Tensor, frames: int) -> torch.Tensor:
        """DenseAV's ``interpolate_mask``: the sample mask resized bilinearly to the frames, > 0.01."""
        if not self.config.mask_silence:
            return torch.ones(mask.shape[0], frames, dtype=torch.bool, device=mask.device)
        m = F.interpolate(mask.to(torch.float32)[:, None, None, :], (1, frames), mode="bilinear")
        return m.reshape(mask.shape[0], frames) > 0.01

    def encode_audio(self, wave: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz ``[B, L]`` with bool validity ``[B, L]`` -> (``[B, C, K, 1, T]``, bool ``[B, T]``).

        The network runs on the padded clip (56 frames for 164,200 samples); the frames returned are
        those that start inside the first ``L`` samples (55 for a 10 s clip).
        """
        x, mask = self.prepare_audio(wave, mask)
        hidden = self.audio_backbone(input_values=x).last_hidden_state  # [B, T50, D]
        feats = self.audio_norm(hidden).transpose(1, 2).unsqueeze(2)  # mean over the one frequency bin
        cls = self.audio_cls_layer(self.audio_norm(self.audio_cls)).expand(x.shape[0], -1)
        feats = self.audio_pool2(self.audio_pool1(feats))  # [B, K*C, 1, T]
        if feats.shape[-1] < 1:
            raise ValueError(f"audio of {wave.shape[1]} samples is too short for DenseAV's aligner")
        tokens = torch.cat([cls.unsqueeze(1), feats.flatten(2).transpose(1, 2)], 1)
        tokens = self.attention(F.pad(tokens, (self.attention_padding, 0)))[..., self.attention_padding :]
        feats = tokens[:, 1:].transpose(1, 2).unsqueeze(2)
        frame_mask = self.frame_mask(mask, feats.shape[-1])
        # Frames that start inside the padding added here are silence DenseAV masks out; dropping
        # them keeps frames spanning the caller's clip (frame times = clip length / T).
        keep = math.ceil(wave.shape[1] * feats.shape[-1] / x.shape[1])
        return self._with_cls(feats, tokens[:, 0])[..., :keep], frame_mask[:, :keep]

    def logit_scale(self) -> torch.Tensor:
        """DenseAV's calibration weight w = clamp(exp(sim_cal.w), 0.01, 100)."""
        return self.sim_cal_w.exp().clamp(0.01, 100.0).squeeze(0)


# --------------------------------------------------------------------------- which head is speech


def _average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact (non-interpolated) binary average precision."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / max(hits.sum(), 1.0))


def speech_head_scores(speech: np.ndarray, sound: np.ndarray) -> dict[str, Any]:
    """Pred.Dis's head <-> type assignment from per-head matched-pair scores ``[N, 2]`` on speech and
    on sound clips: each head min-max normalized over both sets, AP of every head as a speech and as
    a sound detector; the speech head is the one of the better assignment."""
    scores = np.concatenate([speech, sound]).astype(np.float64)
    scores -= scores.min(0, keepdims=True)
    scores /= np.maximum(scores.max(0, keepdims=True), 1e-4)
    is_speech = np.r_[np.ones(len(speech)), np.zeros(len(sound))].astype(bool)
    ap = [[_average_precision(scores[:, k], is_speech), _average_precision(scores[:, k], ~is_speech)] for k in range(2)]
    straight, crossed = (ap[0][0] + ap[1][1]) / 2, (ap[0][1] + ap[1][0]) / 2
    return {
        "speech_head": 0 if straight >= crossed else 1,
        "pred_dis": max(straight, crossed),
        "ap": {"head0": {"speech": ap[0][0], "sound": ap[0][1]}, "head1": {"speech": ap[1][0], "sound": ap[1][1]}},
    }


@torch.no_grad()
def matched_head_scores(model: DenseAVModel, clips: list[np.ndarray], images: torch.Tensor) -> np.ndarray:
    """Per-head score ``s_k`` of each 16 kHz clip with its image (``images[i]``), ``[N, K]``."""
    from .similarity import head_scores

    out = []
    for clip, image in zip(clips, images):
        wave = torch.as_tensor(np.asarray(clip, np.float32)).unsqueeze(0)
        a, m = model.encode_audio(wave, torch.ones_like(wave, dtype=torch.bool))
        v = model.encode_image(image.unsqueeze(0))
        out.append([float(head_scores(a, m, v, k)[0, 0]) for k in range(model.config.num_heads)])
    return np.asarray(out)


def pick_speech_head(
    model: DenseAVModel, speech: list[np.ndarray], sound: list[np.ndarray], images: torch.Tensor
) -> dict[str, Any]:
    """The speech head of a two-head model from its activations on speech and on sound clips (each
    clip scored with the image of the same index), as Pred.Dis assigns heads to audio types."""
    if model.config.num_heads != 2:
        raise ValueError(f"head assignment needs two heads, the model has {model.config.num_heads}")
    return speech_head_scores(
        matched_head_scores(model, speech, images[: len(speech)]),
        matched_head_scores(model, sound, images[: len(sound)]),
    )
