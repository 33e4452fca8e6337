"""One training step's pieces: backends, the learning rate, padding and gathering a micro-batch
across processes, and its loss (paper Eq. 11, via ``model.loss.mix_separate_loss``), for the
batch's audio types (``types``: sound and speech, or K typed streams) and the types in its mixture
(``mix_types``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from accelerate import Accelerator

from model.config import DEFAULT_TYPES, head_types_of
from model.loss import LossWeights, mix_separate_loss
from model.network import batch_types
from model.regularizers import make_mosaic
from pipeline.data.sources import seed_from
from training.config import OptimConfig, TrainConfig


def tensor_names(types: Sequence[str]) -> tuple[str, ...]:
    """The batch tensors a step moves to the device, for audio types ``types`` (the contract of
    ``docs/architecture.md``): each type's image, audio, mask and (optional) splice, the mixture's
    audio and mask."""
    return (
        *(f"{t}_image" for t in types),
        *(f"{t}_audio" for t in types),
        "mix_audio",
        *(f"{t}_mask" for t in types),
        "mix_mask",
        *(f"{t}_splice" for t in types),
    )


TENSORS = tensor_names(DEFAULT_TYPES)  # the two-stream batch's


def batch_items(batch: dict) -> int:
    """Items in a (possibly empty) batch: the length of its first type's keys."""
    return next((len(batch[f"{t}_key"]) for t in batch_types(batch) if f"{t}_key" in batch), 0)


def configure_backends(device: torch.device) -> None:
    """Fast kernels on GPU: clips and images have fixed sizes, so cuDNN's autotuner pays off, and
    TF32 for the parts that stay in float32 under bf16 autocast."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def lr_at(step: int, cfg: OptimConfig) -> float:
    if cfg.lr_warmup_steps <= 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step + 1) / cfg.lr_warmup_steps)


def pad_batch(
    batch: dict, size: int, image_size: int, clip: int, types: Sequence[str] | None = None
) -> tuple[dict, torch.Tensor]:
    """Pad a (possibly empty) batch to ``size`` items; returns it and the mask of real items.

    Ranks must run the same number of equally sized forwards for the gathered loss; finite-epoch
    batches may differ by an item between ranks, so the short ones get dummies that are dropped
    again after the gather. ``types``: the run's audio types, for a batch that names none (default:
    its ``types``, else sound and speech); ``types`` and ``mix_types`` travel on with the tensors.
    """
    if types is not None and "types" not in batch:
        batch = {**batch, "types": tuple(types)}
    n = batch_items(batch)
    valid = torch.arange(size) < n
    if n == size:
        return batch, valid
    out = {key: batch[key] for key in ("types", "mix_types") if key in batch}
    device = batch[f"{batch_types(batch)[0]}_audio"].device if n else "cpu"
    shapes = {"image": (3, image_size, image_size), "audio": (clip,), "mask": (clip,), "splice": (clip,)}
    for name in tensor_names(batch_types(batch)):
        kind = name.rsplit("_", 1)[1]
        dtype = {"image": torch.float32, "audio": torch.float32}.get(kind, torch.bool)
        pad = torch.zeros((size - n, *shapes[kind]), dtype=dtype, device=device)
        if kind == "mask":
            pad[:] = True  # dummies are silent but "valid": no empty mean anywhere
        if name in batch:
            out[name] = torch.cat([batch[name], pad])
        elif n == 0 and kind != "splice":
            out[name] = pad
    return out, valid


class _ContiguousGrad(torch.autograd.Function):
    """The identity, whose backward hands on a contiguous gradient.

    ``all_gather``'s backward on gloo (CPU processes) is an all-to-all that silently misreads a
    strided gradient (gloo collectives on non-contiguous tensors, pytorch/pytorch#192920; torch
    2.11), and the loss's gradient with respect to gathered features is often a strided view: the
    two-process gradient was then wrong while the loss was right."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def gather(x: torch.Tensor, world: int) -> torch.Tensor:
    """Concatenate a per-process tensor over processes, keeping the gradient of the local rows."""
    if world == 1:
        return x
    if x.dtype == torch.bool:
        return gather(x.to(torch.uint8), world).bool()
    if x.requires_grad:
        return torch.cat([_ContiguousGrad.apply(part) for part in torch.distributed.nn.functional.all_gather(x)])
    parts = [torch.empty_like(x) for _ in range(world)]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def loss_weights(cfg: TrainConfig, stage: str) -> LossWeights:
    """The configured weights; the warm-up trains on L_cor (+ regularizers) only.

    With L_cor switched off (the L_dis-only ablation, paper Table 7(a)) the warm-up trains on L_dis
    instead: it must train the aligners on some contrastive term, and L_cor is the one ablated.
    """
    if stage != "warmup" or not cfg.loss.correspondence:
        return cfg.loss
    return dataclasses.replace(cfg.loss, disentanglement=0.0)


def needs_mixture(cfg: TrainConfig, stage: str) -> bool:
    """Whether this stage's loss uses the mixture's features (L_dis has a non-zero weight)."""
    return bool(loss_weights(cfg, stage).disentanglement)


def step_loss(net, model, batch: dict, cfg: TrainConfig, stage: str, step: int, accelerator: Accelerator):
    """Encode one micro-batch, gather it across processes, return (loss, terms, real items)."""
    world, device = accelerator.num_processes, accelerator.device
    types = batch_types(batch)
    # (a no-op for batches that the loader finished on the training device)
    inputs = {k: batch[k].to(device, non_blocking=True) for k in tensor_names(types) if k in batch}
    inputs["types"] = types
    for kind in types:
        if stage == "full" and cfg.mosaic_prob > 0:
            g = torch.Generator().manual_seed(seed_from(cfg.seed, step, accelerator.process_index, kind))
            inputs[f"{kind}_image"], inputs[f"{kind}_image_foreign"] = make_mosaic(
                inputs[f"{kind}_image"], g, cfg.mosaic_prob
            )
    feats = net(inputs, include_mix=needs_mixture(cfg, stage))

    feats = {name: gather(x, world) for name, x in feats.items()}
    valid = batch["valid"]
    mixed = mixture_membership(batch, types, len(valid))
    if world > 1:  # the other processes' padding is known only after a gather (and a host read)
        valid = gather(valid.to(device), world).cpu()
        if len(types) > 2:  # (two types are always mixed together: nothing to gather)
            mixed = gather(mixed.to(device), world).cpu()
    n_items = int(valid.sum())  # a CPU tensor: no wait for the device
    if n_items < len(valid):
        keep = valid.nonzero().squeeze(1).to(device)
        feats = {name: x[keep] for name, x in feats.items()}
        mixed = mixed[valid]
    mix_types, mix_rows = mixed_rows(mixed, types, device)
    # same draws on every process: each computes the identical global loss
    g = torch.Generator().manual_seed(seed_from(cfg.seed, step, "loss"))
    total, terms = mix_separate_loss(
        feats,
        model.logit_scale(),
        loss_weights(cfg, stage),
        head_types=head_types_of(model.config),
        types=types,
        mix_types=mix_types,
        mix_rows=mix_rows,
        logit_scale_init=model.config.logit_scale_init,
        generator=g,
        score_backend=model.config.score_backend,
    )
    return total, terms, n_items


def mixture_membership(batch: dict, types: Sequence[str], size: int) -> torch.Tensor:
    """Bool ``[size, len(types)]`` on the CPU: whether each item's mixture holds each type (the
    batch's ``mix_types``, the same for all its items; every type when it names none)."""
    mix_types = set(batch.get("mix_types") or types)
    return torch.tensor([t in mix_types for t in types]).expand(size, -1).contiguous()


def mixed_rows(mixed: torch.Tensor, types: Sequence[str], device) -> tuple[tuple[str, ...], dict[str, torch.Tensor]]:
    """From the membership of the (global) batch's items: the types that any item's mixture
    holds, and the rows (on ``device``) of each such type that not every item's mixture holds
    (``model.loss.disentanglement_loss``'s ``mix_rows``)."""
    held = [bool(mixed[:, k].any()) for k in range(len(types))]
    rows = {
        t: mixed[:, k].nonzero().squeeze(1).to(device)
        for k, t in enumerate(types)
        if held[k] and not bool(mixed[:, k].all())
    }
    return tuple(t for t, h in zip(types, held) if h), rows
