"""DenseAV's stabilizing regularizers, each on its own, and the image mosaic they need.

The paper adds DenseAV's regularizers "for stability" without listing them; these are DenseAV's,
with its default weights (``RegularizerWeights``). ``volume`` below is the matched-pair similarity
volume ``[B, K, F, T, h, w]`` of ``model.similarity.pair_volume`` with padded frames zeroed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from pipeline.fields import checked

# Random audio x image vectors drawn for the non-negativity term, and the most padded frames used by
# the silence term (DenseAV's sample count).
SAMPLES = 250


@dataclass
class RegularizerWeights:
    nonneg: float = checked(0.01, ge=0)  # min(0, s)^2 over random audio x image vectors
    silence: float = checked(0.01, ge=0)  # |s| between padded audio frames and images
    splice: float = checked(0.01, ge=0)  # p^2 on frames replaced by negative-audio splicing
    tv: float = checked(0.01, ge=0)  # (p[t+1] - p[t])^2
    temperature: float = checked(0.1, ge=0)  # max(0, log(w0) - log(w))^2
    specialization: float = checked(0.05, ge=0)  # |p_i| * |p_j| over pairs of heads
    mixup: float = checked(0.1, ge=0)  # p^2 on foreign quadrants of image mosaics


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Squares and sums of bf16/fp16 values lose too much precision; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _weighted_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Sum of ``x * weight`` over the sum of ``weight`` broadcast to ``x``; 0 when that is 0."""
    total = weight.expand_as(x).sum()
    # With no weight the numerator is 0 as well; the floor avoids 0/0 without a host sync.
    return (x * weight).sum() / total.clamp_min(torch.finfo(total.dtype).tiny)


def _randint(high: int, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=generator).to(device)


def nonnegativity(
    a: torch.Tensor, v: torch.Tensor, generator: torch.Generator | None = None, samples: int = SAMPLES
) -> torch.Tensor:
    """Mean of ``min(0, s)^2`` over all pairs of ``samples`` random audio vectors and ``samples``
    random image vectors (per head), drawn from random items of the batch."""
    b, _, _, f, t = a.shape
    _, _, _, h, w = v.shape
    item = _randint(b, samples, generator, a.device)
    audio = a[item, :, :, _randint(f, samples, generator, a.device), _randint(t, samples, generator, a.device)]
    image = v[item, :, :, _randint(h, samples, generator, a.device), _randint(w, samples, generator, a.device)]
    sims = at_least_float32(torch.einsum("ick,jck->ijk", audio, image))
    return sims.clamp_max(0).square().mean()


def silence(
    a: torch.Tensor,
    frame_mask: torch.Tensor,
    v: torch.Tensor,
    generator: torch.Generator | None = None,
    samples: int = SAMPLES,
) -> torch.Tensor:
    """Mean ``|s|`` between up to ``samples`` padded audio frames and every image vector of the
    batch: padding must not look like anything. 0 when no frame is padded."""
    item, frame = (~frame_mask).nonzero(as_tuple=True)
    if item.numel() == 0:
        return a.new_zeros(())
    if item.numel() > samples:
        keep = torch.randperm(item.numel(), generator=generator)[:samples].to(item.device)
        item, frame = item[keep], frame[keep]
    audio = a[item, :, :, :, frame].mean(-1)  # [n, C, K]
    return at_least_float32(torch.einsum("nck,bckhw->bknhw", audio, v)).abs().mean()


def splice(volume: torch.Tensor, frame_mask: torch.Tensor, splice_frames: torch.Tensor) -> torch.Tensor:
    """Mean ``p^2`` over valid frames that came from another clip: foreign audio matches nothing."""
    weight = (splice_frames & frame_mask).to(volume.dtype)[:, None, None, :, None, None]
    return _weighted_mean(volume.square(), weight)


def temporal_smoothness(volume: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Mean ``(p[t+1] - p[t])^2`` over pairs of consecutive valid frames."""
    if volume.shape[3] < 2:
        return volume.new_zeros(())
    step = volume[:, :, :, 1:] - volume[:, :, :, :-1]
    both = (frame_mask[:, 1:] & frame_mask[:, :-1]).to(volume.dtype)[:, None, None, :, None, None]
    return _weighted_mean(step.square(), both)


def temperature_floor(logit_scale: torch.Tensor, init: float = 1.0) -> torch.Tensor:
    """``max(0, log(init) - log(w))^2``: keeps the temperature from collapsing below its start."""
    return (math.log(init) - torch.log(logit_scale.clamp_min(1e-8))).clamp_min(0).square()


def head_specialization(volume: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Mean ``|p_i| * |p_j|`` over pairs of heads and valid frames: one head at a time responds."""
    heads = volume.shape[1]
    if heads < 2:
        return volume.new_zeros(())
    weight = frame_mask.to(volume.dtype)[:, None, :, None, None]
    magnitude = volume.abs()
    terms = [
        _weighted_mean(magnitude[:, i] * magnitude[:, j], weight) for i, j in itertools.combinations(range(heads), 2)
    ]
    return torch.stack(terms).mean()


def image_mixup(volume: torch.Tensor, frame_mask: torch.Tensor, foreign: torch.Tensor) -> torch.Tensor:
    """Mean ``p^2`` on image cells that came from other images of a mosaic (``foreign`` ``[B, h, w]``,
    the foreign share of each cell), over valid frames. 0 when no item is a mosaic."""
    weight = (
        foreign.to(volume.dtype)[:, None, None, None, :, :] * frame_mask.to(volume.dtype)[:, None, None, :, None, None]
    )
    return _weighted_mean(volume.square(), weight)


def make_mosaic(images: torch.Tensor, generator: torch.Generator, p: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """DenseAV's quad mixup: with probability ``p`` an image becomes a 2x2 mosaic of itself and
    three other images of the batch (each downscaled by 2, quadrants in random order).

    Returns the images and the bool foreign mask ``[B, H, W]`` (True on quadrants from other
    images), the ``*_image_foreign`` entries of a training batch. Draws come from ``generator``
    (a CPU generator), so the same seed gives the same mosaics on any device.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    b, _, height, width = images.shape
    foreign = torch.zeros(b, height, width, dtype=torch.bool, device=images.device)
    chosen = (torch.rand(b, generator=generator) < p).nonzero().flatten().tolist()
    if b < 2 or not chosen:
        return images, foreign
    out = images.clone()
    top, left = height // 2, width // 2
    quadrants = [(0, top, 0, left), (0, top, left, width), (top, height, 0, left), (top, height, left, width)]
    for i in chosen:
        others = torch.randint(0, b - 1, (3,), generator=generator)
        others = others + (others >= i).long()  # any item but i
        sources = [i, *others.tolist()]
        order = torch.randperm(4, generator=generator).tolist()
        for (r0, r1, c0, c1), slot in zip(quadrants, order):
            src = sources[slot]
            out[i, :, r0:r1, c0:c1] = F.interpolate(
                images[src : src + 1], size=(r1 - r0, c1 - c0), mode="bilinear", align_corners=False, antialias=True
            )[0]
            foreign[i, r0:r1, c0:c1] = slot != 0
    return out, foreign
