"""Audio-visual similarity (paper Eqs. 2-6): the volume, batch score matrices, dense heatmaps.

Shapes: audio features ``a`` ``[Ba, C, K, F, T]`` with a bool frame mask ``[Ba, T]``; image
features ``v`` ``[Bv, C, K, h, w]``. The volume (Eq. 2) is ``S[k, f, t, h, w] = sum_c a[c,k,f,t]
v[c,k,h,w]`` (raw dot products). Heads are aggregated by ``max_over_heads`` (Eq. 3, ``S_M``) or one
is selected (Eq. 4, ``S_N``); a score is the mean over valid (f, t) of the max over (h, w):
``total_scores`` (Eq. 5, ``s_M``) and ``head_scores`` (Eq. 6, ``s_N``).

``batch_scores`` computes the ``[Ba, Bv]`` matrix for contrastive learning without materializing
``Ba x Bv x K x F x T x h x w``: it walks blocks of audio x image pairs, keeps for each (pair, f, t)
only the argmax position, and its backward scatters the gradient to exactly those positions (the
max has a one-hot gradient). Values and gradients equal ``naive_batch_scores``. Its ``backend``
picks the implementation (``SCORE_BACKENDS``): the Triton kernels of ``model.fused_scores``, the
blocked torch computation here (the CPU and fallback path), or the naive einsum.
"""

from __future__ import annotations

import functools
import math

import torch

# About how many elements the blocks of ``batch_scores`` hold at once: far below the naive volume,
# large enough for efficient matmuls. GPUs get larger blocks so kernel launches stay few.
DEFAULT_CHUNK_ELEMENTS = {"cpu": 1 << 22, "other": 1 << 24}
# "auto": the fused Triton kernels on CUDA when triton imports, the blocked computation otherwise.
SCORE_BACKENDS = ("auto", "fused", "blocked", "naive")


def _check(a: torch.Tensor, frame_mask: torch.Tensor, v: torch.Tensor) -> None:
    if a.dim() != 5:
        raise ValueError(f"audio features must be [B, C, K, F, T], got {tuple(a.shape)}")
    if v.dim() != 5:
        raise ValueError(f"image features must be [B, C, K, h, w], got {tuple(v.shape)}")
    if a.shape[1:3] != v.shape[1:3]:
        raise ValueError(f"audio (C, K) = {tuple(a.shape[1:3])} and image (C, K) = {tuple(v.shape[1:3])} differ")
    if frame_mask.dtype != torch.bool or frame_mask.shape != (a.shape[0], a.shape[-1]):
        raise ValueError(
            f"frame_mask must be bool [{a.shape[0]}, {a.shape[-1]}], got {frame_mask.dtype} {tuple(frame_mask.shape)}"
        )


def max_over_heads(x: torch.Tensor, dim: int) -> torch.return_types.max:
    """Eq. 3, ``S_M = max_k S``: the element-wise max over the head axis ``dim`` of a volume (or of
    any reduction of it that commutes with the max), with the winning head as ``indices``."""
    return x.max(dim)


def _select_head(a: torch.Tensor, v: torch.Tensor, head: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Head ``head`` of both features, kept as a one-head axis (``None``: all heads).

    The volume of one head's slices is Eq. 4's ``S_N = S[N]``; the slices themselves are what
    Eq. 8 (clean clips, ``a^A[N]``, ``a^P[N']``) and Eq. 10 (the mixture, ``a^m[N]``, ``a^m[N']``) name.
    """
    if head is None:
        return a, v
    num_heads = a.shape[2]
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < num_heads:
        raise ValueError(f"head must be None or an int in 0..{num_heads - 1}, got {head!r}")
    return a[:, :, head : head + 1], v[:, :, head : head + 1]


def masked_mean_weights(frame_mask: torch.Tensor, num_freq: int, dtype: torch.dtype) -> torch.Tensor:
    """Weights ``[B, T]`` of the masked mean over (f, t): ``mask / (F * valid frames)``.

    A clip without valid frames gets all-zero weights, hence a score of 0.
    """
    m = frame_mask.to(dtype)
    return m / (num_freq * m.sum(1, keepdim=True).clamp_min(1.0))


def naive_batch_scores(
    a: torch.Tensor, frame_mask: torch.Tensor, v: torch.Tensor, head: int | None = None
) -> torch.Tensor:
    """Reference implementation: the full volume by einsum, then the reductions of Eqs. 3-6."""
    _check(a, frame_mask, v)
    a, v = _select_head(a, v, head)
    volume = torch.einsum("ackft,bckhw->abkfthw", a, v)  # [Ba, Bv, K, F, T, h, w]
    per_head_max = max_over_heads(volume, 2).values  # a no-op for one head
    spatial_max = per_head_max.flatten(-2).max(-1).values  # [Ba, Bv, F, T]
    w = masked_mean_weights(frame_mask, a.shape[3], spatial_max.dtype)
    return (spatial_max * w[:, None, None, :]).sum((2, 3))


class _Plan:
    """How ``batch_scores`` walks the pairs: blocks of images, and within each, blocks of clips.

    Per (clip, image) pair a block holds the volume ``K FT hw`` in forward, or the rows gathered in
    backward ``3 FT C``; block sizes keep the larger of the two near ``budget`` elements. Blocks
    are about three times as many clips as images, which makes the block's matmul roughly square
    (``FT`` ~ 56 rows per clip against ``hw`` ~ 196 columns per image).
    """

    def __init__(self, a_shape: torch.Size, v_shape: torch.Size, budget: int):
        num_audio, channels, heads, freq, frames = a_shape
        num_image, _, _, h, w = v_shape
        self.num_audio, self.num_image = num_audio, num_image
        self.heads, self.channels, self.freq, self.frames = heads, channels, freq, frames
        self.ft, self.h, self.w, self.hw = freq * frames, h, w, h * w
        per_pair = max(heads * self.ft * self.hw, 3 * self.ft * channels)
        pairs = max(1, budget // per_pair)
        image_block = min(num_image, max(1, math.isqrt(pairs // 3)))
        audio_block = min(num_audio, max(1, pairs // image_block))
        image_block = min(num_image, max(image_block, pairs // audio_block))  # spend what small batches leave
        self.image_block, self.audio_block = int(image_block), int(audio_block)

    def image_blocks(self):
        for j0 in range(0, self.num_image, self.image_block):
            yield j0, min(j0 + self.image_block, self.num_image)

    def audio_blocks(self):
        for i0 in range(0, self.num_audio, self.audio_block):
            yield i0, min(i0 + self.audio_block, self.num_audio)


def _audio_rows(a: torch.Tensor, i0: int, i1: int, dtype: torch.dtype) -> torch.Tensor:
    """Clips ``i0:i1`` as ``[K, (i1-i0)*F*T, C]`` (rows ordered clip, f, t)."""
    block = a[i0:i1].to(dtype)
    return block.permute(2, 0, 3, 4, 1).reshape(block.shape[2], -1, block.shape[1])


def _image_rows(v: torch.Tensor, j0: int, j1: int, dtype: torch.dtype) -> torch.Tensor:
    """Images ``j0:j1`` as ``[K, (j1-j0)*h*w, C]`` (rows ordered image, h, w)."""
    block = v[j0:j1].to(dtype)
    return block.permute(2, 0, 3, 4, 1).reshape(block.shape[2], -1, block.shape[1])


def _block_argmax(a_rows: torch.Tensor, v_rows: torch.Tensor, hw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over (head, h, w) for rows of audio vectors against a block of images.

    ``a_rows`` ``[K, R, C]``, ``v_rows`` ``[K, bv*hw, C]`` -> values ``[R, bv]`` and the flat
    index ``k * hw + position`` of the winner.
    """
    heads, rows = a_rows.shape[:2]
    sim = torch.bmm(a_rows, v_rows.transpose(1, 2)).view(heads, rows, -1, hw)
    values, position = sim.max(-1)  # [K, R, bv]
    if heads == 1:
        return values[0], position[0]
    best, head = max_over_heads(values, 0)  # after the spatial max: the two maxima commute
    position = position.gather(0, head.unsqueeze(0)).squeeze(0)
    return best, head * hw + position


def _scores_forward(a, v, weights, plan: _Plan, dtype: torch.dtype, keep_argmax: bool):
    """Scores ``[Ba, Bv]`` (and the winners' indices ``[Ba*FT, Bv]`` when ``keep_argmax``)."""
    ft, hw = plan.ft, plan.hw
    scores = weights.new_zeros(plan.num_audio, plan.num_image)
    argmax = (
        torch.empty(plan.num_audio * ft, plan.num_image, dtype=torch.int32, device=a.device) if keep_argmax else None
    )
    for j0, j1 in plan.image_blocks():
        v_rows = _image_rows(v, j0, j1, dtype)
        for i0, i1 in plan.audio_blocks():
            best, index = _block_argmax(_audio_rows(a, i0, i1, dtype), v_rows, hw)
            best = best.to(weights.dtype).view(i1 - i0, ft, j1 - j0)
            scores[i0:i1, j0:j1] = (best * weights[i0:i1, :, None]).sum(1)
            if argmax is not None:
                argmax[i0 * ft : i1 * ft, j0:j1] = index
    return scores, argmax


class _BlockedMaxMeanScores(torch.autograd.Function):
    """Forward keeps only the argmax of each (clip, f, t; image); backward sends each score's
    gradient, times the frame weight, to the two vectors whose product won."""

    @staticmethod
    def forward(ctx, a, v, weights, plan: _Plan, dtype: torch.dtype):
        with torch.autocast(a.device.type, enabled=False):
            scores, argmax = _scores_forward(a, v, weights, plan, dtype, keep_argmax=True)
        ctx.plan, ctx.dtype = plan, dtype
        ctx.save_for_backward(a, v, weights, argmax)
        return scores

    @staticmethod
    def backward(ctx, grad_scores):
        a, v, weights, argmax = ctx.saved_tensors
        plan: _Plan = ctx.plan
        heads, channels, ft, hw = plan.heads, plan.channels, plan.ft, plan.hw
        acc = weights.dtype  # float32, or float64 for float64 inputs
        need_a, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_a = torch.zeros(a.shape, dtype=acc, device=a.device) if need_a else None
        grad_v = torch.zeros(v.shape, dtype=acc, device=v.device) if need_v else None
        grad_scores = grad_scores.to(acc)
        with torch.autocast(a.device.type, enabled=False):
            for j0, j1 in plan.image_blocks():
                bv = j1 - j0
                v_rows = _image_rows(v, j0, j1, ctx.dtype).reshape(-1, channels) if need_a else None
                grad_v_rows = torch.zeros(heads * bv * hw, channels, dtype=acc, device=v.device) if need_v else None
                offset = torch.arange(bv, device=v.device).unsqueeze(0) * hw
                for i0, i1 in plan.audio_blocks():
                    rows = (i1 - i0) * ft
                    index = argmax[i0 * ft : i1 * ft, j0:j1].long()  # [R, bv]
                    head, position = index // hw, index % hw
                    winner = head * (bv * hw) + offset + position  # row of the winning image vector
                    # d score[i, j] / d max value at (i, f, t; j) = the frame weight of (i, f, t).
                    w = (grad_scores[i0:i1, j0:j1].unsqueeze(1) * weights[i0:i1, :, None]).reshape(rows, bv)
                    if need_a:
                        gathered = v_rows[winner].to(acc)  # [R, bv, C]
                        per_head = [
                            torch.einsum("rj,rjc->rc", w if heads == 1 else w * (head == k), gathered)
                            for k in range(heads)
                        ]
                        grad = torch.stack(per_head).view(heads, i1 - i0, plan.freq, plan.frames, channels)
                        grad_a[i0:i1] += grad.permute(1, 4, 0, 2, 3)
                    if need_v:
                        a_rows = _audio_rows(a, i0, i1, ctx.dtype).reshape(-1, channels)
                        own = torch.arange(rows, device=a.device).unsqueeze(1)
                        gathered = a_rows[head * rows + own].to(acc)  # [R, bv, C]
                        grad_v_rows.index_add_(0, winner.flatten(), (gathered * w.unsqueeze(-1)).reshape(-1, channels))
                if need_v:
                    grad_v[j0:j1] += grad_v_rows.view(heads, bv, plan.h, plan.w, channels).permute(1, 4, 0, 2, 3)
        return (
            grad_a.to(a.dtype) if need_a else None,
            grad_v.to(v.dtype) if need_v else None,
            None,
            None,
            None,
        )


@functools.cache
def _fused_module():
    """``model.fused_scores``, or None where triton does not import."""
    try:
        from . import fused_scores
    except ImportError:
        return None
    return fused_scores


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The implementation ``backend`` means for inputs on ``device`` with products in ``dtype``."""
    if backend not in SCORE_BACKENDS:
        raise ValueError(f"score backend must be one of {', '.join(SCORE_BACKENDS)}; got {backend!r}")
    if backend != "auto" and backend != "fused":
        return backend
    fused = _fused_module() if backend == "fused" or device.type == "cuda" else None
    if backend == "auto":
        return "fused" if fused is not None and dtype in fused.SUPPORTED_DTYPES else "blocked"
    if fused is None:
        raise ValueError("score backend 'fused' needs triton, which does not import here; install it or use 'blocked'")
    if device.type != "cuda" and not fused.INTERPRET:
        raise ValueError(
            f"score backend 'fused' runs Triton kernels on CUDA tensors, not {device.type}; use 'auto' or "
            "'blocked' here (or set TRITON_INTERPRET=1 before triton is imported to interpret them, slowly)"
        )
    if dtype not in fused.SUPPORTED_DTYPES:
        raise ValueError(f"score backend 'fused' computes in float16, bfloat16 or float32, not {dtype}; use 'blocked'")
    return "fused"


def batch_scores(
    a: torch.Tensor,
    frame_mask: torch.Tensor,
    v: torch.Tensor,
    head: int | None = None,
    chunk: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Score matrix ``[Ba, Bv]``: ``s_M`` (``head=None``) or ``s_N`` (``head=N``) for every pair.

    ``backend``: one of ``SCORE_BACKENDS``. ``chunk`` (blocked backend): about how many elements
    its blocks may hold at once (default ``DEFAULT_CHUNK_ELEMENTS``: 4M on the CPU, 16M on
    accelerators). Under ``torch.autocast`` the products run in the autocast dtype; scores and
    gradient accumulation stay in float32 (float64 for float64 inputs).
    """
    _check(a, frame_mask, v)
    device_type = a.device.type
    dtype = (
        torch.get_autocast_dtype(device_type)
        if torch.is_autocast_enabled(device_type)
        else torch.promote_types(a.dtype, v.dtype)
    )
    backend = resolve_backend(backend, a.device, dtype)
    if backend == "naive":
        return naive_batch_scores(a, frame_mask, v, head)
    a, v = _select_head(a, v, head)
    out_dtype = torch.promote_types(dtype, torch.float32)
    num_audio, _, _, freq, frames = a.shape
    weights = masked_mean_weights(frame_mask, freq, out_dtype)
    weights = weights.unsqueeze(1).expand(num_audio, freq, frames).reshape(num_audio, freq * frames)
    if backend == "fused":
        return _fused_module().fused_scores(a, v, weights, dtype)
    budget = chunk or DEFAULT_CHUNK_ELEMENTS["cpu" if device_type == "cpu" else "other"]
    plan = _Plan(a.shape, v.shape, budget)
    if torch.is_grad_enabled() and (a.requires_grad or v.requires_grad):
        return _BlockedMaxMeanScores.apply(a, v, weights, plan, dtype)
    with torch.autocast(device_type, enabled=False):
        return _scores_forward(a, v, weights, plan, dtype, keep_argmax=False)[0]


def total_scores(
    a: torch.Tensor, frame_mask: torch.Tensor, v: torch.Tensor, chunk: int | None = None, backend: str = "auto"
) -> torch.Tensor:
    """Eq. 5: ``s_M(a_i, v_j)`` for every clip i and image j, ``[Ba, Bv]`` (heads max-pooled)."""
    return batch_scores(a, frame_mask, v, None, chunk, backend)


def head_scores(
    a: torch.Tensor,
    frame_mask: torch.Tensor,
    v: torch.Tensor,
    head: int,
    chunk: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Eq. 6: ``s_N(a_i, v_j)`` of head ``N = head`` for every clip i and image j, ``[Ba, Bv]``."""
    if head is None:
        raise ValueError("head_scores needs a head index; total_scores is the max over heads")
    return batch_scores(a, frame_mask, v, head, chunk, backend)


# --------------------------------------------------------------------------- matched pairs, heatmaps


def pair_volume(a: torch.Tensor, v: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The volume of Eq. 2 for matched pairs ``a[i] <-> v[i]``: ``[B, K, F, T, h, w]``.

    With ``frame_mask``, invalid (padded) frames are zeroed.
    """
    if a.dim() != 5 or v.dim() != 5 or a.shape[:3] != v.shape[:3]:
        raise ValueError(f"need matched [B, C, K, ...] features, got {tuple(a.shape)} and {tuple(v.shape)}")
    volume = torch.einsum("bckft,bckhw->bkfthw", a, v)
    if frame_mask is not None:
        if frame_mask.shape != (a.shape[0], a.shape[-1]):
            raise ValueError(f"frame_mask must be [{a.shape[0]}, {a.shape[-1]}], got {tuple(frame_mask.shape)}")
        volume = volume * frame_mask.to(volume.dtype)[:, None, None, :, None, None]
    return volume


def _aggregate_heads(volume: torch.Tensor, head: int | str) -> torch.Tensor:
    """``volume`` ``[B, K, ...]`` -> ``[B, ...]`` (``"max"``: element-wise max over heads, the
    paper's "total"; int: one head) or unchanged for ``"all"``."""
    if head == "all":
        return volume
    if head in ("max", "total"):
        return max_over_heads(volume, 1).values
    if isinstance(head, int) and not isinstance(head, bool) and 0 <= head < volume.shape[1]:
        return volume[:, head]
    raise ValueError(f"head must be 'max', 'total', 'all' or an int in 0..{volume.shape[1] - 1}, got {head!r}")


def frame_heatmaps(a: torch.Tensor, v: torch.Tensor, head: int | str = "max") -> torch.Tensor:
    """Per-frame heatmaps of matched pairs: ``[B, T, h, w]`` (``[B, K, T, h, w]`` for ``"all"``),
    averaged over the frequency axis."""
    return _aggregate_heads(pair_volume(a, v).mean(2), head)


def heatmaps(
    a: torch.Tensor,
    frame_mask: torch.Tensor,
    v: torch.Tensor,
    head: int | str = "max",
    frame_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Heatmaps of matched pairs averaged over time: ``[B, h, w]`` (``[B, K, h, w]`` for ``"all"``).

    ``head=N`` maps one head's volume (Eq. 4): for a clean clip, the similarity of its head-N
    features ``a^A[N]`` / ``a^P[N']`` (Eq. 8); for a mixture, of ``a^m[N]`` (Eq. 10).

    Averages over the valid frames, or over a window of them when ``frame_weights`` ``[B, T]``
    (bool or float, e.g. ``word_window``) is given. Heads are aggregated per frame before the
    average (element-wise max for ``"max"``/``"total"``).
    """
    _check(a, frame_mask, v)
    if a.shape[0] != v.shape[0]:
        raise ValueError(f"heatmaps need matched pairs; got {a.shape[0]} clips and {v.shape[0]} images")
    per_frame = frame_heatmaps(a, v, head)  # [B, (K,) T, h, w]
    weight = frame_mask.to(per_frame.dtype)
    if frame_weights is not None:
        if frame_weights.shape != frame_mask.shape:
            raise ValueError(f"frame_weights must be {tuple(frame_mask.shape)}, got {tuple(frame_weights.shape)}")
        weight = weight * frame_weights.to(per_frame.dtype)
    total = weight.sum(1)
    empty = (total <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"items {empty} have no valid frame inside their frame window")
    weight = weight / total.unsqueeze(1)
    if head == "all":
        return torch.einsum("bkthw,bt->bkhw", per_frame, weight)
    return torch.einsum("bthw,bt->bhw", per_frame, weight)


def word_window(
    start_s: torch.Tensor,
    end_s: torch.Tensor,
    clip_seconds: float,
    num_frames: int,
    pad_s: float = 0.2,
) -> torch.Tensor:
    """Frames covering a word, widened by ``pad_s`` on each side (DenseAV's "advanced" window).

    ``[start - pad, end + pad] / clip_seconds * T``; frames from floor(lower) inclusive to
    ceil(upper) exclusive. Returns bool ``[B, T]``.
    """
    start_s = torch.as_tensor(start_s, dtype=torch.float64).reshape(-1)
    end_s = torch.as_tensor(end_s, dtype=torch.float64).reshape(-1)
    if start_s.shape != end_s.shape:
        raise ValueError("start_s and end_s must have the same length")
    lower = torch.floor((start_s - pad_s) / clip_seconds * num_frames)
    upper = torch.ceil((end_s + pad_s) / clip_seconds * num_frames)
    frames = torch.arange(num_frames, dtype=torch.float64)
    return (frames.unsqueeze(0) >= lower.unsqueeze(1)) & (frames.unsqueeze(0) < upper.unsqueeze(1))
