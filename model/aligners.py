"""Aligners: backbone features -> the shared space, split into K heads of C channels.

Image: ``[B, D, h, w]`` -> channel-wise LayerNorm -> 1x1 conv -> ``[B, C, K, h, w]``.
Audio: ``[B, D, F, T]`` -> mean over frequency -> channel-wise LayerNorm -> non-overlapping
stride-w convolutions along time (50 Hz -> ~5.6 Hz for widths 3, 3) -> optional self-attention
block with a learned CLS token -> ``[B, C, K, 1, T']``.

Channels are laid out head-major (channel ``k * C + c`` is channel ``c`` of head ``k``), as in
DenseAV's split of 384 channels into two heads of 192.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis (dim 1) of a ``[B, D, ...]`` map."""

    def __init__(self, channels: int, eps: float = 1e-4):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, K*C, ...]`` (head-major) -> ``[B, C, K, ...]``."""
    b, channels = x.shape[:2]
    return x.reshape(b, num_heads, channels // num_heads, *x.shape[2:]).transpose(1, 2).contiguous()


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block (attention + 4x MLP) over a token sequence ``[B, N, D]``."""

    def __init__(self, dim: int, heads: int, eps: float = 1e-4):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``keep`` bool ``[B, N]``: tokens others may attend to."""
        b, n, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if keep is None else keep[:, None, None, :]
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(y.transpose(1, 2).reshape(b, n, dim))
        return x + self.mlp(self.norm2(x))


class ImageAligner(nn.Module):
    def __init__(self, in_channels: int, code_dim: int, num_heads: int, norm_eps: float = 1e-4):
        super().__init__()
        self.num_heads = num_heads
        self.norm = ChannelNorm(in_channels, norm_eps)
        self.proj = nn.Conv2d(in_channels, code_dim * num_heads, kernel_size=1)

    def forward(self, feats: torch.Tensor, pool: int = 1) -> torch.Tensor:
        x = self.proj(self.norm(feats))
        if pool > 1:
            x = nn.functional.avg_pool2d(x, pool)
        return split_heads(x, self.num_heads)


class AudioAligner(nn.Module):
    def __init__(
        self,
        in_channels: int,
        code_dim: int,
        num_heads: int,
        pool: list[int],
        *,
        self_attention: bool = True,
        attention_heads: int = 6,
        norm_eps: float = 1e-4,
    ):
        super().__init__()
        out = code_dim * num_heads
        self.num_heads = num_heads
        self.pool = list(pool)
        self.norm = ChannelNorm(in_channels, norm_eps)
        # No nonlinearity between the pooling convs, as in DenseAV: together they are one learned
        # linear downsampling of the 50 Hz frames.
        convs = []
        for i, width in enumerate(self.pool):
            convs.append(nn.Conv1d(in_channels if i == 0 else out, out, kernel_size=width, stride=width))
        self.convs = nn.Sequential(*convs)
        if self_attention:
            self.cls_token = nn.Parameter(torch.randn(out) * 0.02)
            self.attention = SelfAttentionBlock(out, attention_heads, norm_eps)
        else:
            self.cls_token = None
            self.attention = None

    def output_frames(self, frames: int) -> int:
        for width in self.pool:
            frames = frames // width
        return frames

    def forward(self, feats: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``feats`` ``[B, D, F, T]``; ``frame_mask`` bool ``[B, T']`` at the output rate (keys of
        invalid frames are hidden from the attention)."""
        x = self.norm(feats.mean(2, keepdim=True)).squeeze(2)  # [B, D, T]
        x = self.convs(x)  # [B, K*C, T']
        if self.attention is not None:
            tokens = x.transpose(1, 2)
            cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
            tokens = torch.cat([cls, tokens], 1)
            keep = None
            if frame_mask is not None:
                keep = torch.cat([frame_mask.new_ones(frame_mask.shape[0], 1), frame_mask], 1)
            tokens = self.attention(tokens, keep)
            x = tokens[:, 1:].transpose(1, 2)
        return split_heads(x.unsqueeze(2), self.num_heads)  # [B, C, K, 1, T']
