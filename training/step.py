"""One training step's pieces: backends, the learning rate, padding and gathering a micro-batch
across processes, and its loss (paper Eq. 11, via ``model.loss.mix_separate_loss``)."""

from __future__ import annotations

import dataclasses

import torch
from accelerate import Accelerator

from model.loss import LossWeights, mix_separate_loss
from model.regularizers import make_mosaic
from pipeline.data.sources import seed_from
from training.config import OptimConfig, TrainConfig

TENSORS = (
    "sound_image",
    "speech_image",
    "sound_audio",
    "speech_audio",
    "mix_audio",
    "sound_mask",
    "speech_mask",
    "mix_mask",
    "sound_splice",
    "speech_splice",
)


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


def pad_batch(batch: dict, size: int, image_size: int, clip: int) -> tuple[dict, torch.Tensor]:
    """Pad a (possibly empty) batch to ``size`` items; returns it and the mask of real items.

    Ranks must run the same number of equally sized forwards for the gathered loss; finite-epoch
    batches may differ by an item between ranks, so the short ones get dummies that are dropped
    again after the gather.
    """
    n = len(batch.get("speech_key", []))
    valid = torch.arange(size) < n
    if n == size:
        return batch, valid
    out = {}
    device = batch["speech_audio"].device if n else "cpu"
    shapes = {"image": (3, image_size, image_size), "audio": (clip,), "mask": (clip,), "splice": (clip,)}
    for name in TENSORS:
        kind = name.split("_")[1]
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
    # (a no-op for batches that the loader finished on the training device)
    inputs = {k: batch[k].to(device, non_blocking=True) for k in TENSORS if k in batch}
    for kind in ("sound", "speech"):
        if stage == "full" and cfg.mosaic_prob > 0:
            g = torch.Generator().manual_seed(seed_from(cfg.seed, step, accelerator.process_index, kind))
            inputs[f"{kind}_image"], inputs[f"{kind}_image_foreign"] = make_mosaic(
                inputs[f"{kind}_image"], g, cfg.mosaic_prob
            )
    feats = net(inputs, include_mix=needs_mixture(cfg, stage))

    feats = {name: gather(x, world) for name, x in feats.items()}
    valid = batch["valid"]
    if world > 1:  # the other processes' padding is known only after a gather (and a host read)
        valid = gather(valid.to(device), world).cpu()
    n_items = int(valid.sum())  # a CPU tensor: no wait for the device
    if n_items < len(valid):
        keep = valid.nonzero().squeeze(1).to(device)
        feats = {name: x[keep] for name, x in feats.items()}
    # same draws on every process: each computes the identical global loss
    g = torch.Generator().manual_seed(seed_from(cfg.seed, step, "loss"))
    total, terms = mix_separate_loss(
        feats,
        model.logit_scale(),
        loss_weights(cfg, stage),
        sound_head=model.config.sound_head,
        speech_head=model.config.speech_head,
        logit_scale_init=model.config.logit_scale_init,
        generator=g,
        score_backend=model.config.score_backend,
    )
    return total, terms, n_items
