"""Triton kernels for the ``[Ba, Bv]`` score matrix of ``model.similarity.batch_scores`` and its
gradient (the ``"fused"`` score backend).

``s[i, j] = sum_{f,t} w[i, f, t] * max_{k, h, w} sum_c a[i, c, k, f, t] v[j, c, k, h, w]`` with ``w``
the masked-mean weights; one head (Eq. 6) is the same with ``K = 1``. The forward kernel keeps, per
(clip frame, image), a running max and its argmax over (head, position) in registers while it walks
tiles of the image's vectors, so the ``Ba x Bv x K x F x T x h x w`` volume never exists; it writes
the max and the winner's index ``k * h*w + position`` (``[Bv, Ba*F*T]``, small), and the weighted
mean over frames is one small torch reduction of the maxima.

The backward uses that the max has a one-hot gradient: with ``G[j, (i,f,t)] = dL/ds[i, j] * w[i,f,t]``,
``grad_a[i, :, k*, f, t] = sum_j G v[j, :, k*, pos*]`` and ``grad_v[j, :, k, pos] = sum over the frames
that picked (k, pos) of G a[i, :, k, f, t]``. Both are Triton kernels rather than torch gather /
index_add ops, because the torch form needs the gathered ``[Ba*F*T, Bv, C]`` rows (as large as the
volume's per-pair share times C) in memory or a Python loop over blocks, which is what makes the
blocked path slow. ``grad_a`` gathers the winning image vectors row by row (each program owns its
output rows: no atomics); ``grad_v`` is, per image tile, the product of the transposed one-hot
matrix ``G * [winner == (k, pos)]`` with the audio rows, a dense ``tl.dot`` that writes each output
element once (deterministic, no atomics, on the tensor cores).

Products run in the input dtype (bf16/fp16 inputs: the tensor cores; float32: TF32 when
``torch.backends.cuda.matmul.allow_tf32`` is set, else full precision) and accumulate in float32;
scores and gradients are accumulated in float32. Triton's interpreter (``TRITON_INTERPRET=1`` set
before triton is first imported) runs the same kernels on CPU tensors, for the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

# Decided when triton was imported, as triton's own library functions are.
INTERPRET = bool(knobs.runtime.interpret)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# Sizes are compile-time constants: the interpreter cannot loop over runtime scalars, and on a GPU
# the autotuner keys on them anyway (one compile per shape, which training keeps fixed).
@triton.jit
def _forward_kernel(
    A,
    V,
    MAX,
    ARG,
    R: tl.constexpr,
    HW: tl.constexpr,
    C: tl.constexpr,
    NV: tl.constexpr,
    K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Program (row block, image j): max and argmax over (k, pos) of <A[k, r], V[k, j, pos]>.

    A: [K, R, C] audio rows (r = clip, f, t); V: [K, NV*HW, C] image rows; MAX, ARG: [NV, R].
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    j = tl.program_id(1)
    row_ok = rows < R
    cols = tl.arange(0, BLOCK_N)
    chans = tl.arange(0, BLOCK_C)
    best = tl.full([BLOCK_M], float("-inf"), tl.float32)
    arg = tl.zeros([BLOCK_M], tl.int32)
    for k in range(0, K):
        a_head = A + k * R * C
        v_image = V + (k * NV + j) * HW * C
        for n0 in range(0, HW, BLOCK_N):
            pos = n0 + cols
            pos_ok = pos < HW
            acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            for c0 in range(0, C, BLOCK_C):
                ch = c0 + chans
                ch_ok = ch < C
                a = tl.load(a_head + rows[:, None] * C + ch[None, :], mask=row_ok[:, None] & ch_ok[None, :], other=0.0)
                v = tl.load(v_image + pos[:, None] * C + ch[None, :], mask=pos_ok[:, None] & ch_ok[None, :], other=0.0)
                if DOT_FP32:  # the interpreter's dot mishandles 16-bit floats; their products are exact in fp32
                    a = a.to(tl.float32)
                    v = v.to(tl.float32)
                acc = tl.dot(a, tl.trans(v), acc, input_precision=PRECISION)
            acc = tl.where(pos_ok[None, :], acc, float("-inf"))
            tile_best, tile_arg = tl.max(acc, axis=1, return_indices=True, return_indices_tie_break_left=True)
            better = tile_best > best  # strict: the first (head, position) wins ties, as torch's max
            best = tl.where(better, tile_best, best)
            arg = tl.where(better, k * HW + n0 + tile_arg, arg)
    tl.store(MAX + j * R + rows, best, mask=row_ok)
    tl.store(ARG + j * R + rows, arg, mask=row_ok)


@triton.jit
def _grad_audio_kernel(
    V,
    ARG,
    G,
    GA,
    R: tl.constexpr,
    HW: tl.constexpr,
    C: tl.constexpr,
    NV: tl.constexpr,
    K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Program (row block, channel block): GA[k, r] = sum_j G[j, r] [head(j, r) == k] V[k, j, pos(j, r)]."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < R
    ch_ok = ch < C
    for k in range(0, K):
        acc = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
        for j in range(0, NV):
            index = tl.load(ARG + j * R + rows, mask=row_ok, other=0)
            g = tl.load(G + j * R + rows, mask=row_ok, other=0.0)
            head = index // HW
            g = tl.where(head == k, g, 0.0)
            source = V + ((k * NV + j) * HW + index - head * HW)[:, None] * C + ch[None, :]
            # rows whose winner is another head (or a masked frame, g = 0) read nothing
            v = tl.load(source, mask=((g != 0.0) & row_ok)[:, None] & ch_ok[None, :], other=0.0)
            acc += g[:, None] * v.to(tl.float32)
        tl.store(GA + (k * R + rows)[:, None] * C + ch[None, :], acc, mask=row_ok[:, None] & ch_ok[None, :])


@triton.jit
def _grad_image_kernel(
    A,
    ARG,
    G,
    GV,
    R: tl.constexpr,
    HW: tl.constexpr,
    C: tl.constexpr,
    NV: tl.constexpr,
    K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Program (image j, position block, channel block): GV[k, j, pos] = sum over rows r that
    picked (k, pos) of G[j, r] A[k, r], as (G * one-hot)^T @ A over blocks of rows."""
    j = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ch = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    pos_ok = pos < HW
    ch_ok = ch < C
    for k in range(0, K):
        acc = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
        for r0 in range(0, R, BLOCK_M):
            rows = r0 + tl.arange(0, BLOCK_M)
            row_ok = rows < R
            index = tl.load(ARG + j * R + rows, mask=row_ok, other=-1)
            g = tl.load(G + j * R + rows, mask=row_ok, other=0.0)
            hit = index[:, None] == (k * HW + pos)[None, :]
            a = tl.load(A + (k * R + rows)[:, None] * C + ch[None, :], mask=row_ok[:, None] & ch_ok[None, :], other=0.0)
            p = tl.where(hit, g[:, None], 0.0).to(a.dtype)
            if DOT_FP32:
                a = a.to(tl.float32)
                p = p.to(tl.float32)
            acc = tl.dot(tl.trans(p), a, acc, input_precision=PRECISION)
        tl.store(GV + ((k * NV + j) * HW + pos)[:, None] * C + ch[None, :], acc, mask=pos_ok[:, None] & ch_ok[None, :])


def _configs(*shapes):
    return [
        triton.Config(dict(zip(names, values)), num_warps=warps, num_stages=stages)
        for names, values, warps, stages in shapes
    ]


_KEY = ["R", "HW", "C", "NV", "K"]
if INTERPRET:  # the autotuner would time each config in the interpreter; fixed small tiles instead
    _forward, _grad_audio, _grad_image = _forward_kernel, _grad_audio_kernel, _grad_image_kernel
    _FIXED, _FIXED_AUDIO = dict(BLOCK_M=16, BLOCK_N=16), dict(BLOCK_M=16)
else:
    _MN = ("BLOCK_M", "BLOCK_N")
    _forward = triton.autotune(
        _configs(
            (_MN, (128, 64), 8, 3),
            (_MN, (64, 64), 4, 3),
            (_MN, (128, 32), 4, 3),
            (_MN, (64, 32), 4, 4),
            (_MN, (128, 128), 8, 3),
        ),
        key=_KEY,
    )(_forward_kernel)
    _grad_audio = triton.autotune(
        _configs(
            (("BLOCK_M",), (32,), 4, 2),
            (("BLOCK_M",), (64,), 4, 2),
            (("BLOCK_M",), (128,), 8, 2),
        ),
        key=_KEY,
    )(_grad_audio_kernel)
    _grad_image = triton.autotune(
        _configs(
            (_MN, (64, 64), 4, 3),
            (_MN, (32, 128), 4, 3),
            (_MN, (64, 128), 8, 3),
            (_MN, (32, 256), 8, 2),
        ),
        key=_KEY,
    )(_grad_image_kernel)
    _FIXED = _FIXED_AUDIO = {}


def _channel_block(channels: int) -> int:
    """Channels per dot step: >= 16 (tl.dot's minimum), at most 64 (register pressure)."""
    return max(16, min(64, triton.next_power_of_2(channels)))


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # (ignored for 16-bit inputs)


def _rows(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, C, K, *spatial]`` -> contiguous ``[K, B * prod(spatial), C]`` (rows ordered item, spatial)."""
    return x.to(dtype).movedim(2, 0).movedim(2, -1).reshape(x.shape[2], -1, x.shape[1]).contiguous()


def _from_rows(rows: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``_rows``: ``[K, B * prod(spatial), C]`` -> ``shape`` ``[B, C, K, *spatial]`` in ``dtype``."""
    b, c, k, *spatial = shape
    return rows.view(k, b, *spatial, c).movedim(-1, 2).movedim(0, 2).to(dtype)


def _check_sizes(*numels: int) -> None:
    # the kernels index with 32-bit offsets
    if max(numels) >= 2**31:
        raise ValueError("inputs too large for the fused score kernels' 32-bit indexing; use score backend 'blocked'")


class FusedMaxMeanScores(torch.autograd.Function):
    """``[Ba, Bv]`` scores from the forward kernel; backward from the saved argmax (see the module)."""

    @staticmethod
    def forward(ctx, a, v, weights, dtype: torch.dtype):
        num_audio, channels, heads = a.shape[:3]
        num_image, hw = v.shape[0], v.shape[3] * v.shape[4]
        with torch.autocast(a.device.type, enabled=False):
            a_rows, v_rows = _rows(a, dtype), _rows(v, dtype)
            rows = a_rows.shape[1]
            _check_sizes(a_rows.numel(), v_rows.numel(), num_image * rows)
            best = torch.empty(num_image, rows, dtype=torch.float32, device=a.device)
            argmax = torch.empty(num_image, rows, dtype=torch.int32, device=a.device)
            sizes = dict(R=rows, HW=hw, C=channels, NV=num_image, K=heads)

            def grid(meta):
                return triton.cdiv(rows, meta["BLOCK_M"]), num_image

            _forward[grid](
                a_rows,
                v_rows,
                best,
                argmax,
                *sizes.values(),
                **_FIXED,
                BLOCK_C=_channel_block(channels),
                PRECISION=_precision(dtype),
                DOT_FP32=INTERPRET,
            )
            w = weights.to(torch.float32)
            scores = (best.view(num_image, num_audio, -1) * w).sum(-1).t().contiguous()
        ctx.sizes, ctx.dtype = sizes, dtype
        ctx.a_meta, ctx.v_meta = (a.shape, a.dtype), (v.shape, v.dtype)
        ctx.save_for_backward(a_rows, v_rows, w, argmax)
        return scores.to(weights.dtype)

    @staticmethod
    def backward(ctx, grad_scores):
        a_rows, v_rows, w, argmax = ctx.saved_tensors
        sizes = ctx.sizes
        rows, num_image, channels = sizes["R"], sizes["NV"], sizes["C"]
        # d score[i, j] / d max at (i, f, t; j) is the frame weight w[i, f, t]
        g = (grad_scores.to(torch.float32).t().unsqueeze(-1) * w).reshape(num_image, rows).contiguous()
        block_c = _channel_block(channels)
        need_a, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_a = grad_v = None
        with torch.autocast(a_rows.device.type, enabled=False):
            if need_a:
                out = torch.empty(a_rows.shape, dtype=torch.float32, device=a_rows.device)

                def grid(meta):
                    return triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(channels, block_c)

                _grad_audio[grid](v_rows, argmax, g, out, *sizes.values(), **_FIXED_AUDIO, BLOCK_C=block_c)
                grad_a = _from_rows(out, *ctx.a_meta)
            if need_v:
                out = torch.empty(v_rows.shape, dtype=torch.float32, device=v_rows.device)

                def grid(meta):
                    return num_image, triton.cdiv(sizes["HW"], meta["BLOCK_N"]), triton.cdiv(channels, block_c)

                _grad_image[grid](
                    a_rows,
                    argmax,
                    g,
                    out,
                    *sizes.values(),
                    **_FIXED,
                    BLOCK_C=block_c,
                    PRECISION=_precision(ctx.dtype),
                    DOT_FP32=INTERPRET,
                )
                grad_v = _from_rows(out, *ctx.v_meta)
        return grad_a, grad_v, None, None


def fused_scores(a: torch.Tensor, v: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Scores ``[Ba, Bv]`` of features ``a`` ``[Ba, C, K, F, T]`` and ``v`` ``[Bv, C, K, h, w]`` with
    frame weights ``[Ba, F*T]``, products in ``dtype`` (one of ``SUPPORTED_DTYPES``)."""
    if a.shape[0] == 0 or v.shape[0] == 0:
        # no clips or no images: nothing to launch (a grid with no blocks); an empty score matrix
        # that stays in the graph, so backward gives both inputs their (empty or zero) gradients
        link = (a.sum() + v.sum()).to(weights.dtype) * 0
        return weights.new_zeros(a.shape[0], v.shape[0]) + link
    if a.device.type == "cuda":
        with torch.cuda.device(a.device):
            return FusedMaxMeanScores.apply(a, v, weights, dtype)
    return FusedMaxMeanScores.apply(a, v, weights, dtype)
