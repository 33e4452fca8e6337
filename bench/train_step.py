"""Items/s and peak memory of full training steps (random weights built from configs, no downloads).

    python bench/train_step.py --preset tiny --batch-size 8                       # CPU
    python bench/train_step.py --preset paper --batch-size 16 --device cuda       # one GPU, bf16
    python bench/train_step.py --preset paper --batch-size 2 --steps 0 --count-flops   # FLOPs per item

A step is what train.py does per optimizer step: encode both images and the three audios of the
batch, the gathered loss (L_cor + L_dis + regularizers, or L_cor in the warm-up), backward, gradient
clipping, Adam. Batches are random tensors of the real shapes, so the figure is the model's ceiling,
independent of the loader (bench/loader.py measures that side).

``--count-flops`` counts one extra step's matmul, convolution and attention FLOPs (forward and
backward, torch's FlopCounterMode) and prints them per item, with the rate the timed steps
achieve: items/s x FLOPs per item, the figure to hold against the device's peak.
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import torch
from accelerate import Accelerator
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop

from model.config import ModelConfig
from model.factory import build_model
from training.config import TrainConfig
from training.step import configure_backends, step_loss


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                         output_padding, groups, output_mask, out_shape=None) -> int:
    """aten.convolution_backward: each gradient asked for costs what the forward convolution does.

    torch 2.11's own formula drops the group division in one term, which counts HuBERT's grouped
    positional convolution (16 groups) about 8x over: about 0.38 TFLOP too many per item.
    """
    if transposed:
        return conv_backward_flop(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                                  output_padding, groups, output_mask, out_shape)
    forward = 2 * math.prod(grad_out_shape) * math.prod(w_shape[1:])  # w: [c_out, c_in / groups, *kernel]
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})


def make_batch(b: int, image_size: int, clip: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {k: torch.randn(b, 3, image_size, image_size, generator=g) for k in ("sound_image", "speech_image")}
    for k in ("sound_audio", "speech_audio"):
        batch[k] = 0.1 * torch.randn(b, clip, generator=g)
    batch["mix_audio"] = batch["sound_audio"] + batch["speech_audio"]
    mask = torch.ones(b, clip, dtype=torch.bool)
    mask[: b // 2, int(clip * 0.7):] = False  # some padded clips, as in real data
    batch.update(sound_mask=mask, speech_mask=mask.flip(0), mix_mask=mask | mask.flip(0),
                 speech_key=[str(i) for i in range(b)], valid=torch.ones(b, dtype=torch.bool))
    return batch


def run(preset: str, batch_size: int, steps: int, warmup: int, device: str, precision: str,
        stage: str, clip_seconds: float, checkpointing: bool, audio_channels_last: bool = False,
        count_flops: bool = False) -> dict:
    model_cfg = ModelConfig.preset(preset, pretrained=False, gradient_checkpointing=checkpointing,
                                   audio_channels_last=audio_channels_last)
    cfg = TrainConfig(model=model_cfg, mixed_precision=precision)
    accelerator = Accelerator(mixed_precision=precision, cpu=device == "cpu")
    configure_backends(accelerator.device)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    model.set_stage(stage)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-5, eps=1e-7)
    net, optimizer = accelerator.prepare(model, optimizer)
    batch = make_batch(batch_size, model.config.image_size, int(clip_seconds * 16_000))
    on_gpu = accelerator.device.type == "cuda"

    def step(i):
        optimizer.zero_grad(set_to_none=True)
        with accelerator.autocast():
            total, _, _ = step_loss(net, model, batch, cfg, stage, i, accelerator)
        accelerator.backward(total)
        accelerator.clip_grad_norm_(params, 10.0)
        optimizer.step()
        return total

    for i in range(warmup):
        step(i)
    flops = None
    if count_flops:
        with flop_counter() as counter:
            step(warmup)
        flops = counter.get_total_flops()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    loss = None
    for i in range(steps):
        loss = step(warmup + i)
    if loss is not None:
        float(loss.detach())  # waits for the device
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if on_gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    return {"items_per_s": batch_size * steps / elapsed if steps else None, "step_s": elapsed / max(steps, 1),
            "peak_gib": peak, "gflop_per_item": flops / batch_size / 1e9 if flops is not None else None,
            "device": torch.cuda.get_device_name() if on_gpu else "cpu", "precision": accelerator.mixed_precision,
            "params_trainable_M": sum(p.numel() for p in params) / 1e6}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[8])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default=None, help="no / bf16 (default: bf16 on cuda, no on cpu)")
    ap.add_argument("--stage", default="full", choices=["warmup", "full"])
    ap.add_argument("--clip-seconds", type=float, default=10.0)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--count-flops", action="store_true", help="count the FLOPs of one extra step (see above)")
    ap.add_argument("--audio-channels-last", choices=["off", "on", "both"], default="off",
                    help="HuBERT's conv front end in channels-last layout; both: A/B in this run")
    args = ap.parse_args()
    precision = args.precision or ("bf16" if args.device == "cuda" else "no")
    variants = {"off": [False], "on": [True], "both": [False, True]}[args.audio_channels_last]
    for b in args.batch_size:
        for channels_last in variants:
            r = run(args.preset, b, args.steps, args.warmup, args.device, precision, args.stage, args.clip_seconds,
                    args.gradient_checkpointing, channels_last, args.count_flops)
            tag = " audio-channels-last" if channels_last else ""
            head = f"{args.preset} stage={args.stage} B={b}{tag} {r['device']} {r['precision']}:"
            if r["items_per_s"] is not None:
                print(f"{head} {r['items_per_s']:.1f} items/s, {r['step_s'] * 1000:.0f} ms/step, "
                      f"peak {r['peak_gib']:.2f} GiB, {r['params_trainable_M']:.1f} M trainable parameters", flush=True)
            if r["gflop_per_item"] is not None:
                rate = (f", {r['gflop_per_item'] * r['items_per_s'] / 1e3:.2f} TFLOP/s achieved by the timed steps"
                        if r["items_per_s"] is not None else "")
                print(f"{head} {r['gflop_per_item']:.1f} GFLOP per item (one step counted){rate}", flush=True)


if __name__ == "__main__":
    main()
