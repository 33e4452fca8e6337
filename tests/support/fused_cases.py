"""The fused score kernels against the naive einsum, run under Triton's interpreter.

Triton decides at its import whether kernels are interpreted (its own library functions are
decorated then), so this runs as its own process with ``TRITON_INTERPRET=1`` in the environment:
``TRITON_INTERPRET=1 python -m tests.support.fused_cases`` prints one JSON object, per case the
largest error of scores and gradients relative to the reference's largest magnitude.
"""

from __future__ import annotations

import json
import os

import torch

from model import fused_scores
from model.loss import LossWeights, mix_separate_loss
from model.similarity import batch_scores, naive_batch_scores


def features(ba, bv, c, k, f, t, h, w, seed):
    """Random features and a frame mask with short clips and one clip (index 1) fully masked."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(ba, c, k, f, t, generator=gen, dtype=torch.float64)
    v = torch.randn(bv, c, k, h, w, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (ba,), generator=gen)
    lengths[1] = 0
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    return a, mask, v


def relative(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.detach().double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def compare(a, mask, v, head, dtype, autocast: bool) -> dict:
    """Fused scores and gradients (products in ``dtype``) against the float64 einsum of the same
    rounded inputs: what remains is accumulation order (and the rounding of gradients to ``dtype``)."""
    rounded_a, rounded_v = a.to(dtype).double(), v.to(dtype).double()
    g = torch.randn(a.shape[0], v.shape[0], generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ref_a, ref_v = rounded_a.clone().requires_grad_(), rounded_v.clone().requires_grad_()
    ref = naive_batch_scores(ref_a, mask, ref_v, head)
    (ref * g).sum().backward()
    input_dtype = torch.float32 if autocast else dtype
    got_a = a.to(input_dtype).requires_grad_()
    got_v = v.to(input_dtype).requires_grad_()
    with torch.autocast("cpu", dtype=dtype, enabled=autocast):
        scores = batch_scores(got_a, mask, got_v, head, backend="fused")
    (scores.double() * g).sum().backward()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=autocast):
        no_grad = batch_scores(got_a, mask, got_v, head, backend="fused")
    empty = ~mask.any(1)
    return {
        "scores": relative(scores, ref.detach()),
        "no_grad_scores": relative(no_grad, ref.detach()),
        "grad_a": relative(got_a.grad, ref_a.grad),
        "grad_v": relative(got_v.grad, ref_v.grad),
        "scores_dtype": str(scores.dtype),
        "grad_dtypes": [str(got_a.grad.dtype), str(got_v.grad.dtype)],
        "empty_clip_abs": float(scores.detach()[empty].abs().max() + got_a.grad[empty].abs().max()),
    }


def loss_case() -> dict:
    """mix_separate_loss (Eq. 11, regularizers included) with the fused backend against the naive one."""
    shapes = dict(ba=3, bv=3, c=8, k=2, f=1, t=7, h=3, w=3)
    feats = {}
    for n, kind in enumerate(("sound", "speech", "mix")):
        a, mask, v = features(**shapes, seed=10 + n)
        feats[f"{kind}_audio"], feats[f"{kind}_mask"] = a.float(), mask
        if kind != "mix":
            feats[f"{kind}_image"] = v.float()
    feats["speech_mask"][1] = True  # the regularizers' heatmaps need a valid frame per clip
    out = {}
    for backend in ("naive", "fused"):
        leaves = {name: x.clone().requires_grad_() for name, x in feats.items() if x.is_floating_point()}
        total, _ = mix_separate_loss(
            {**feats, **leaves},
            torch.tensor(3.0),
            LossWeights(),
            generator=torch.Generator().manual_seed(0),
            score_backend=backend,
        )
        total.backward()
        out[backend] = (total.detach(), {name: x.grad for name, x in leaves.items()})
    (ref, ref_grads), (got, got_grads) = out["naive"], out["fused"]
    return {
        "loss": relative(got, ref.double()),
        "grads": max(relative(got_grads[name], ref_grads[name].double()) for name in ref_grads),
    }


def empty_batch_case() -> dict:
    """No clips, then no images: the shape of the naive scores, and a backward that runs."""
    out = {}
    for name, (ba, bv) in {"no_clips": (0, 3), "no_images": (3, 0)}.items():
        a, _, v = features(ba=max(ba, 2), bv=max(bv, 1), c=8, k=2, f=1, t=5, h=2, w=2, seed=0)
        a, v = a[:ba].float().requires_grad_(), v[:bv].float().requires_grad_()
        mask = torch.ones(ba, 5, dtype=torch.bool)
        scores = batch_scores(a, mask, v, None, backend="fused")
        scores.sum().backward()
        out[name] = {
            "shape": list(scores.shape),
            "naive_shape": list(naive_batch_scores(a, mask, v, None).shape),
            "grad_shapes": [list(a.grad.shape), list(v.grad.shape)],
        }
    return out


def main() -> None:
    small = dict(ba=3, bv=5, c=8, k=2, f=1, t=7, h=3, w=3)
    # several tiles in every dimension: 42 rows, 25 positions, 20 channels against 16-wide tiles
    tiles = dict(ba=3, bv=2, c=20, k=2, f=2, t=7, h=5, w=5)
    cases = {
        "max_heads_fp32": (small, None, torch.float32, False),
        "one_head_fp32": (small, 1, torch.float32, False),
        "tiles_fp32": (tiles, None, torch.float32, False),
        "tiles_one_head_fp32": (tiles, 0, torch.float32, False),
        "bf16_autocast": (small, None, torch.bfloat16, True),
        "bf16_inputs_one_head": (tiles, 1, torch.bfloat16, False),
        "fp16_inputs": (small, None, torch.float16, False),
    }
    result = {"interpret": fused_scores.INTERPRET, "env": os.environ.get("TRITON_INTERPRET")}
    for n, (name, (shapes, head, dtype, autocast)) in enumerate(cases.items()):
        a, mask, v = features(**shapes, seed=n)
        result[name] = compare(a, mask, v, head, dtype, autocast)
    result["loss"] = loss_case()
    result["empty"] = empty_batch_case()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
