"""CAV-MAE (Gong et al., ICLR 2023), the pretraining model's encoders (DenseAV evaluates
CAV-MAE-Scale++, ``audio_model.21.pth``), as a dense zero-shot model the way DenseAV evaluates it
(``denseav/featurizers/CAVMAE.py``: ``forward_audio`` / ``forward_video``).

The module's attribute paths are the release's key names without DataParallel's ``module.``
prefix; the MAE decoder (``decoder_*``, ``mask_token``) and the unified stream's joint norm
(``norm``) are not used for features, so ``model.baselines.convert`` drops the decoder by name and
this module keeps ``norm`` only so the encoder's keys load strictly.

* audio: the normalized fbank ``[1024, 128]`` as a 128 x 1024 picture, 16 x 16 patches (Conv2d
  with bias) -> 8 x 64 tokens, plus the stored sin-cos position embedding and the modality
  embedding ``modality_a``; the audio blocks ``blocks_a`` (norms ``norm1``/``norm2``), then the
  unified blocks ``blocks_u`` with the audio norms ``norm1_a``/``norm2_a``, then ``norm_a``;
* video: the ImageNet-normalized 224 px image, 16 x 16 patches -> 14 x 14 tokens, ``pos_embed_v``,
  ``modality_v``, ``blocks_v``, ``blocks_u`` with ``norm1_v``/``norm2_v``, ``norm_v``;
* blocks: timm ViT blocks (qkv with bias split q|k|v, GELU MLP), LayerNorm eps 1e-5; the tokens
  are not normalized (DenseAV uses them raw).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .common import BaselineConfig, BaselineModel
from .fbank import FRAMES, MEL_BINS

IMAGE_SIZE = 224
PATCH = 16
AUDIO_ROWS, AUDIO_COLUMNS = MEL_BINS // PATCH, FRAMES // PATCH  # 8 x 64
HEAD_WIDTH = 64  # 768 / 12 heads; the file's shapes do not record the head count
RELEASE = dict(dim=768, depth_a=11, depth_v=11, depth_u=1, heads=12, mlp=3072)  # CAV-MAE-Scale++ and kin


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """A pre-norm block with three norm sets, chosen by modality: shared (``None``), audio, video."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        for suffix in ("", "_a", "_v"):
            setattr(self, "norm1" + suffix, nn.LayerNorm(dim))
            setattr(self, "norm2" + suffix, nn.LayerNorm(dim))
        self.attn = _Attention(dim, heads)
        self.mlp = _Mlp(dim, hidden)

    def forward(self, x: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        suffix = "" if modality is None else "_" + modality
        x = x + self.attn(getattr(self, "norm1" + suffix)(x))
        return x + self.mlp(getattr(self, "norm2" + suffix)(x))


class _PatchEmbed(nn.Module):
    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, PATCH, PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class CAVMAEModel(BaselineModel):
    """CAV-MAE's audio and video encoders with ``AVModel``'s inference interface (one head)."""

    image_grid = (IMAGE_SIZE // PATCH, IMAGE_SIZE // PATCH)
    audio_rows = AUDIO_ROWS

    def __init__(self, config: BaselineConfig):
        super().__init__(config)
        s = {**RELEASE, **config.sizes}
        dim, heads, hidden = s["dim"], s["heads"], s["mlp"]
        self.feature_dim = dim
        self.patch_embed_a = _PatchEmbed(1, dim)
        self.patch_embed_v = _PatchEmbed(3, dim)
        self.modality_a = nn.Parameter(torch.zeros(1, 1, dim))
        self.modality_v = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed_a = nn.Parameter(torch.zeros(1, AUDIO_ROWS * AUDIO_COLUMNS, dim))
        self.pos_embed_v = nn.Parameter(torch.zeros(1, self.image_grid[0] * self.image_grid[1], dim))
        for name in ("a", "v", "u"):
            blocks = nn.ModuleList(_Block(dim, heads, hidden) for _ in range(s["depth_" + name]))
            setattr(self, "blocks_" + name, blocks)
        self.norm_a, self.norm_v, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.eval()

    def _encode(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        x = getattr(self, "patch_embed_" + modality)(x)
        x = x + getattr(self, "pos_embed_" + modality) + getattr(self, "modality_" + modality)
        for block in getattr(self, "blocks_" + modality):
            x = block(x)
        for block in self.blocks_u:
            x = block(x, modality)
        return getattr(self, "norm_" + modality)(x)

    def image_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, 224, 224]`` -> tokens ``[B, D, 14, 14]`` and their mean ``[B, D]``."""
        x = self._encode(images.to(self._dtype()), "v")
        tokens = x.reshape(x.shape[0], *self.image_grid, -1).permute(0, 3, 1, 2)
        return tokens, tokens.mean((-1, -2))

    def audio_tokens(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized fbank ``[N, 1024, 128]`` -> tokens ``[N, D, 8, 64]`` and their mean ``[N, D]``."""
        x = self._encode(spec.transpose(1, 2).unsqueeze(1), "a")
        tokens = x.reshape(x.shape[0], AUDIO_ROWS, AUDIO_COLUMNS, -1).permute(0, 3, 1, 2)
        return tokens, tokens.mean((-1, -2))

    def retrieval(self, audio: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """DenseAV's ``CAVMAEAggregator``: the cosine of the mean-pooled audio and image tokens."""
        return F.normalize(audio, dim=1) @ F.normalize(image, dim=1).T
