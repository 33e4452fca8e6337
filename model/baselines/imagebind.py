"""ImageBind (Girdhar et al., CVPR 2023), vision and audio towers of ``imagebind_huge``, as a dense
zero-shot model the way DenseAV evaluates it (``denseav/featurizers/ImageBind.py``).

The module's attribute paths are the released state dict's key names
(``modality_preprocessors.vision.rgbt_stem.proj.1.weight``, ``modality_trunks.audio.blocks.3.attn.bias_k``,
``modality_postprocessors.audio.1.log_logit_scale``, ...), so ``imagebind_huge.pth`` loads strictly
into it; the text, depth, thermal and IMU towers of that file are not built.

* vision: the image repeated to 2 frames, Conv3d (2, 14, 14) without bias -> 16 x 16 patches + CLS,
  learned position embedding (257 tokens), LayerNorm (eps 1e-6) before the trunk, pre-norm blocks
  (``nn.MultiheadAttention``, GELU MLP, LayerNorm eps 1e-6);
* audio: the 1024-frame fbank cut into five contiguous tiles of 204 frames (the last 4 frames
  dropped), each a 128 x 204 picture; Conv2d 16 / stride 10 without bias + LayerNorm (eps 1e-5) ->
  12 x 19 patches + CLS, learned position embedding (229 tokens), blocks whose attention has
  learned key/value bias tokens (``add_bias_kv``), no LayerNorm before the trunk;
* the head's LayerNorm + bias-free Linear on every token (DenseAV drops the head's CLS selection),
  then L2 normalization; audio tokens times the fixed logit scale exp(log 20) (a buffer, capped at
  100 as upstream); audio tokens laid out ``[D, 12, 5 x 19]`` (tiles one after another in time),
  the audio CLS the mean over the five tiles.

ImageBind's code and weights are CC-BY-NC 4.0: this is an independent implementation, and the
weights are the user's download (docs/baselines.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .common import BaselineConfig, BaselineModel
from .fbank import FRAMES, MEL_BINS

IMAGE_SIZE = 224
PATCH = 14
VIDEO_FRAMES = 2  # an image is a 2-frame video for the Conv3d stem
TILE_FRAMES = 204  # one audio tile: 2.04 s of fbank frames
TILES = FRAMES // TILE_FRAMES  # 5 (DenseAV asserts it)
AUDIO_KERNEL, AUDIO_STRIDE = 16, 10
AUDIO_ROWS = (MEL_BINS - AUDIO_KERNEL) // AUDIO_STRIDE + 1  # 12 frequency rows
TILE_COLUMNS = (TILE_FRAMES - AUDIO_KERNEL) // AUDIO_STRIDE + 1  # 19 time steps per tile
EPS = 1e-6  # every LayerNorm of the trunks and heads
STEM_EPS = 1e-5  # the audio stem's LayerNorm (torch's default)
AUDIO_LOGIT_SCALE = 20.0
MAX_LOGIT_SCALE = 100.0
# Head widths of the release (vision 1280 / 16 heads, audio 768 / 12 heads): the file's shapes do not
# record the head count, so ``model.baselines.convert`` derives it from the width with these.
VISION_HEAD_WIDTH, AUDIO_HEAD_WIDTH = 80, 64
HUGE = dict(
    vision_dim=1280,
    vision_depth=32,
    vision_heads=16,
    vision_mlp=5120,
    audio_dim=768,
    audio_depth=12,
    audio_heads=12,
    audio_mlp=3072,
    out_dim=1024,
)


class _RepeatFrames(nn.Module):
    """Index 0 of the vision stem: ``[B, 3, H, W]`` -> ``[B, 3, frames, H, W]`` (an image as a still video)."""

    def __init__(self, frames: int):
        super().__init__()
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(2).repeat(1, 1, self.frames, 1, 1)


class _Stem(nn.Module):
    """Patches -> tokens ``[B, N, D]`` (row-major over the patch grid), optionally layer-normed."""

    def __init__(self, proj: nn.Module, norm: nn.Module | None = None):
        super().__init__()
        self.proj = proj
        if norm is not None:
            self.norm_layer = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        norm = getattr(self, "norm_layer", None)
        return x if norm is None else norm(x)


class _Positions(nn.Module):
    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))


class _Tokenizer(nn.Module):
    """``modality_preprocessors.<modality>``: stem, CLS in front, learned positions added."""

    def __init__(self, stem: _Stem, tokens: int, dim: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.rgbt_stem = stem
        self.pos_embedding_helper = _Positions(tokens, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.rgbt_stem(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        return x + self.pos_embedding_helper.pos_embed


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm block: ``x + attn(norm_1(x))``, then ``x + mlp(norm_2(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int, bias_kv: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, bias=True, add_bias_kv=bias_kv, batch_first=True)
        self.norm_1 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = _Mlp(dim, hidden)
        self.norm_2 = nn.LayerNorm(dim, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm_2(x))


class _Trunk(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, hidden: int, bias_kv: bool, pre_norm: bool):
        super().__init__()
        if pre_norm:
            self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(dim, eps=EPS))
        self.blocks = nn.Sequential(*(_Block(dim, heads, hidden, bias_kv) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = getattr(self, "pre_transformer_layer", None)
        return self.blocks(x if pre is None else pre(x))


class _L2Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


class _LogitScale(nn.Module):
    """The audio postprocessor's fixed scale: a buffer ``log_logit_scale`` (log 20 in the release)."""

    def __init__(self, scale: float):
        super().__init__()
        self.register_buffer("log_logit_scale", torch.full((), math.log(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE) * x


def _head(dim: int, out: int) -> nn.Sequential:
    # Index 1 of the released head selects the CLS token; DenseAV applies the head to every token,
    # so it is the identity here (it has no weights).
    return nn.Sequential(nn.LayerNorm(dim, eps=EPS), nn.Identity(), nn.Linear(dim, out, bias=False))


class ImageBindModel(BaselineModel):
    """ImageBind's vision and audio towers with ``AVModel``'s inference interface (one head)."""

    image_grid = (IMAGE_SIZE // PATCH, IMAGE_SIZE // PATCH)
    audio_rows = AUDIO_ROWS

    def __init__(self, config: BaselineConfig):
        super().__init__(config)
        s = {**HUGE, **config.sizes}
        self.feature_dim = s["out_dim"]
        vd, ad = s["vision_dim"], s["audio_dim"]
        grid = self.image_grid[0] * self.image_grid[1]
        vision_stem = _Stem(
            nn.Sequential(
                _RepeatFrames(VIDEO_FRAMES),
                nn.Conv3d(3, vd, (VIDEO_FRAMES, PATCH, PATCH), (VIDEO_FRAMES, PATCH, PATCH), bias=False),
            )
        )
        audio_stem = _Stem(nn.Conv2d(1, ad, AUDIO_KERNEL, AUDIO_STRIDE, bias=False), nn.LayerNorm(ad, eps=STEM_EPS))
        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": _Tokenizer(vision_stem, grid + 1, vd),
                "audio": _Tokenizer(audio_stem, AUDIO_ROWS * TILE_COLUMNS + 1, ad),
            }
        )
        self.modality_trunks = nn.ModuleDict(
            {
                "vision": _Trunk(
                    vd, s["vision_depth"], s["vision_heads"], s["vision_mlp"], bias_kv=False, pre_norm=True
                ),
                "audio": _Trunk(ad, s["audio_depth"], s["audio_heads"], s["audio_mlp"], bias_kv=True, pre_norm=False),
            }
        )
        self.modality_heads = nn.ModuleDict({"vision": _head(vd, s["out_dim"]), "audio": _head(ad, s["out_dim"])})
        self.modality_postprocessors = nn.ModuleDict(
            {"vision": _L2Normalize(), "audio": nn.Sequential(_L2Normalize(), _LogitScale(AUDIO_LOGIT_SCALE))}
        )
        self.eval()

    def _tower(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        x = self.modality_preprocessors[modality](x)
        x = self.modality_trunks[modality](x)
        return self.modality_postprocessors[modality](self.modality_heads[modality](x))

    def image_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, 224, 224]`` -> unit tokens ``[B, D, 16, 16]`` and the unit CLS ``[B, D]``."""
        x = self._tower("vision", images.to(self._dtype()))
        h, w = self.image_grid
        return x[:, 1:].reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2), x[:, 0]

    def audio_tokens(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized fbank ``[N, 1024, 128]`` -> tokens ``[N, D, 12, 95]`` (norm 20) and the CLS
        ``[N, D]``, the mean of the five tiles' CLS tokens."""
        n = spec.shape[0]
        tiles = spec[:, : TILES * TILE_FRAMES].reshape(n * TILES, TILE_FRAMES, MEL_BINS)
        x = self._tower("audio", tiles.transpose(1, 2).unsqueeze(1))  # [N*5, 1 + 12*19, D]
        tokens = x[:, 1:].reshape(n, TILES, AUDIO_ROWS, TILE_COLUMNS, -1)
        tokens = tokens.permute(0, 4, 2, 1, 3).reshape(n, -1, AUDIO_ROWS, TILES * TILE_COLUMNS)
        return tokens, x[:, 0].reshape(n, TILES, -1).mean(1)

    def retrieval(self, audio: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """DenseAV's ``ImageBindAggregator``: the audio CLS (norm up to 20) dotted with the unit image CLS."""
        return audio @ image.T
