"""Full training steps, each speed option as an A/B against the reference in one process.

    python bench/train_step.py --preset tiny --device cpu --steps 2                # CPU, every variant
    python bench/train_step.py --preset paper --batch-size 16 --device cuda       # one GPU, bf16
    python bench/train_step.py --preset paper --device cuda --variants best --best-from ab.jsonl \\
        --set gradient_checkpointing=front_end --batch-size 32 48 64               # largest batch that fits
    python bench/train_step.py --preset paper --batch-size 2 --steps 0 --variants baseline   # FLOPs per item

A step is what train.py does per optimizer step: encode both images and the three audios of the
batch, the gathered loss (L_cor + L_dis + regularizers, or L_cor in the warm-up), backward, gradient
clipping, Adam. Batches are random tensors of the real shapes, so the figure is the model's ceiling,
independent of the loader (bench/loader.py measures that side).

Variants (``VARIANTS``): the baseline is eager attention, no compile, transformers' conv front end,
no checkpointing, the blocked B x B scores; every other variant adds one option, ``combined`` the
exact ones together (a variant this device cannot run, e.g. the fused score kernels off CUDA, prints
why it is skipped). Each variant starts from the baseline's initial weights, and its first step's
loss and gradient norm are compared with the baseline's (max relative difference; "ok" within
float32 tolerance on the CPU, bf16 tolerance on a GPU). Dropout is off in every variant so those
steps are comparable (attention, LoRA and HuBERT dropout draw differently in each kernel); its cost
is the same in all.

Per variant: items/s, ms per step, achieved TFLOP/s (model FLOPs per item from torch's
FlopCounterMode on one extra step, recomputation not counted), MFU against the device's dense bf16
peak (``PEAK_BF16_TFLOPS``; n/a for other devices and the CPU), peak GPU memory, and for compiled
variants graph breaks, graphs and recompiles after the first step. ``--json`` appends one record
per row.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from torch._dynamo.utils import counters
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop

from model.config import ModelConfig
from model.factory import build_model, compile_encoders
from training.config import TrainConfig
from training.step import configure_backends, step_loss

BASELINE = dict(
    attn_implementation="eager",
    compile_encoders="off",
    audio_channels_last=False,
    gradient_checkpointing="off",
    freeze_feature_encoder=False,
    score_backend="blocked",
)
VARIANTS = {
    "baseline": {},
    "sdpa": dict(attn_implementation="sdpa"),
    "channels_last": dict(audio_channels_last=True),
    "checkpoint_front_end": dict(gradient_checkpointing="front_end"),
    "checkpoint_audio": dict(gradient_checkpointing="audio"),
    # not the paper's recipe (it fine-tunes all of HuBERT): reported, never picked as the best
    "freeze_feature_encoder": dict(freeze_feature_encoder=True),
    "fused_scores": dict(score_backend="fused"),  # the Triton B x B score kernels (model/fused_scores.py)
    "combined": dict(
        attn_implementation="sdpa", audio_channels_last=True, score_backend="fused", compile_encoders="default"
    ),
    "compile": dict(compile_encoders="default"),  # last: the slowest to start
}
NOT_PICKED = ("freeze_feature_encoder",)
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by a part of torch.cuda.get_device_name().
# First match wins, so the PCIe H100 is listed before the SXM part's name.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 SXM", 989.0),
    ("H100 80GB HBM3", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
)
TOLERANCE = {"no": 1e-3, "bf16": 3e-2}  # relative, loss and gradient norm of the first step
NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)
FRONT_END = "audio_encoder.backbone.feature_extractor."


def _conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    bias,
    stride,
    padding,
    dilation,
    transposed,
    output_padding,
    groups,
    output_mask,
    out_shape=None,
) -> int:
    """aten.convolution_backward: each gradient asked for costs what the forward convolution does.

    torch 2.11's own formula drops the group division in one term, which counts HuBERT's grouped
    positional convolution (16 groups) about 8x over: about 0.38 TFLOP too many per item.
    """
    if transposed:
        return conv_backward_flop(
            grad_out_shape,
            x_shape,
            w_shape,
            bias,
            stride,
            padding,
            dilation,
            transposed,
            output_padding,
            groups,
            output_mask,
            out_shape,
        )
    forward = 2 * math.prod(grad_out_shape) * math.prod(w_shape[1:])  # w: [c_out, c_in / groups, *kernel]
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})


def peak_tflops(device_name: str) -> float | None:
    return next((peak for part, peak in PEAK_BF16_TFLOPS if part in device_name), None)


def make_batch(b: int, image_size: int, clip: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {k: torch.randn(b, 3, image_size, image_size, generator=g) for k in ("sound_image", "speech_image")}
    for k in ("sound_audio", "speech_audio"):
        batch[k] = 0.1 * torch.randn(b, clip, generator=g)
    batch["mix_audio"] = batch["sound_audio"] + batch["speech_audio"]
    mask = torch.ones(b, clip, dtype=torch.bool)
    mask[: b // 2, int(clip * 0.7) :] = False  # some padded clips, as in real data
    batch.update(
        sound_mask=mask,
        speech_mask=mask.flip(0),
        mix_mask=mask | mask.flip(0),
        speech_key=[str(i) for i in range(b)],
        valid=torch.ones(b, dtype=torch.bool),
    )
    return batch


def model_config(preset: str, options: dict) -> ModelConfig:
    base = ModelConfig.preset(preset)
    return ModelConfig.preset(
        preset,
        pretrained=False,
        lora_dropout=0.0,
        audio_backbone={**base.audio_backbone, **NO_DROPOUT},
        **{**BASELINE, **options},
    )


class Bench:
    """One accelerator, one batch, the baseline's initial weights; ``run`` measures one variant."""

    def __init__(self, preset: str, device: str, precision: str, stage: str, clip_seconds: float):
        self.preset, self.stage, self.clip = preset, stage, int(clip_seconds * 16_000)
        self.accelerator = Accelerator(mixed_precision=precision, cpu=device == "cpu")
        configure_backends(self.accelerator.device)
        self.on_gpu = self.accelerator.device.type == "cuda"
        self.device_name = torch.cuda.get_device_name() if self.on_gpu else "cpu"
        torch.manual_seed(0)
        self.state = build_model(model_config(preset, {})).state_dict()
        self.reference: dict[int, dict] = {}  # the baseline's first step, by batch size
        self.flops: dict[bool, float] = {}  # FLOPs per item, by freeze_feature_encoder

    def run(self, name: str, options: dict, batch_size: int, steps: int, warmup: int) -> dict:
        acc = self.accelerator
        counters.clear()
        torch._dynamo.reset()
        cfg = TrainConfig(model=model_config(self.preset, options), mixed_precision=acc.mixed_precision)
        model = build_model(cfg.model)
        model.load_state_dict(self.state)
        compile_encoders(model)
        model.set_stage(self.stage)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=1e-5, eps=1e-7)
        net, optimizer = acc.prepare(model, optimizer)
        batch = make_batch(batch_size, model.config.image_size, self.clip)
        if self.on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

        def step(i):
            optimizer.zero_grad(set_to_none=True)
            with acc.autocast():
                total, _, _ = step_loss(net, model, batch, cfg, self.stage, i, acc)
            acc.backward(total)
            norm = acc.clip_grad_norm_(params, 10.0)
            optimizer.step()
            return total, norm

        # the first step, before any update: the correctness check against the baseline
        optimizer.zero_grad(set_to_none=True)
        with acc.autocast():
            total, _, _ = step_loss(net, model, batch, cfg, self.stage, 0, acc)
        acc.backward(total)
        check = {
            "loss": float(total.detach()),
            "grad_norm": _norm(model, skip=""),
            "grad_norm_no_front_end": _norm(model, skip=FRONT_END),
        }
        optimizer.zero_grad(set_to_none=True)
        graphs_first = counters["stats"]["unique_graphs"]
        for i in range(warmup):
            step(1 + i)
        frozen = cfg.model.freeze_feature_encoder
        if frozen not in self.flops and cfg.model.compile_encoders == "off":
            with flop_counter() as counter:
                step(1 + warmup)
            self.flops[frozen] = counter.get_total_flops() / batch_size
        start = time.perf_counter()
        for i in range(steps):
            total, _ = step(2 + warmup + i)
        if steps:
            float(total.detach())  # waits for the device
        elapsed = time.perf_counter() - start
        row = {
            "variant": name,
            "options": {**BASELINE, **options},
            "preset": self.preset,
            "stage": self.stage,
            "batch_size": batch_size,
            "device": self.device_name,
            "precision": acc.mixed_precision,
            "items_per_s": batch_size * steps / elapsed if steps else None,
            "step_s": elapsed / steps if steps else None,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if self.on_gpu else None,
            "gflop_per_item": self.flops.get(frozen, self.flops.get(False, math.nan)) / 1e9,
            **check,
            "graph_breaks": sum(counters["graph_break"].values()),
            "graphs": counters["stats"]["unique_graphs"],
            "recompiles_after_first_step": counters["stats"]["unique_graphs"] - graphs_first,
        }
        self._compare(row)
        # drop this variant's model and optimizer (``step`` holds them too) before freeing memory
        net = optimizer = model = params = None
        acc.free_memory()
        gc.collect()
        if self.on_gpu:
            torch.cuda.empty_cache()
        return row

    def _compare(self, row: dict):
        """Relative differences of the first step from the baseline's (same batch and weights)."""
        if row["variant"] == "baseline":
            self.reference.setdefault(row["batch_size"], dict(row))
        ref = self.reference.get(row["batch_size"])
        if ref is None:
            row.update(loss_rel_diff=None, grad_rel_diff=None, ok=None)
            return
        norm = "grad_norm_no_front_end" if row["options"]["freeze_feature_encoder"] else "grad_norm"
        row["loss_rel_diff"] = abs(row["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-12)
        row["grad_rel_diff"] = abs(row[norm] - ref[norm]) / max(abs(ref[norm]), 1e-12)
        row["ok"] = max(row["loss_rel_diff"], row["grad_rel_diff"]) <= TOLERANCE[row["precision"]]


def _norm(model, skip: str) -> float:
    grads = [
        p.grad.float().norm()
        for n, p in model.named_parameters()
        if p.grad is not None and not (skip and n.startswith(skip))
    ]
    return float(torch.stack(grads).norm()) if grads else 0.0


def _unavailable(options: dict, device: torch.device) -> str | None:
    """Why a variant cannot run here (e.g. the fused score kernels off CUDA), or None."""
    from model.similarity import resolve_backend

    try:
        resolve_backend(options.get("score_backend", BASELINE["score_backend"]), device, torch.float32)
    except ValueError as exc:
        return str(exc)
    return None


def describe(row: dict) -> str:
    """One printed row (the test reads these)."""
    head = (
        f"{row['preset']} stage={row['stage']} B={row['batch_size']} {row['variant']:<22} "
        f"{row['device']} {row['precision']}:"
    )
    parts = []
    if row["items_per_s"] is not None:
        tflops = row["gflop_per_item"] * row["items_per_s"] / 1e3
        peak = peak_tflops(row["device"])
        parts += [
            f"{row['items_per_s']:.1f} items/s",
            f"{row['step_s'] * 1000:.0f} ms/step",
            f"{tflops:.2f} TFLOP/s",
            f"MFU {100 * tflops / peak:.1f}%" if peak else "MFU n/a",
            f"peak {row['peak_gib']:.1f} GiB" if row["peak_gib"] is not None else "peak n/a",
        ]
    parts.append(f"{row['gflop_per_item']:.1f} GFLOP/item")
    if row["ok"] is not None:
        verdict = "ok" if row["ok"] else "MISMATCH"
        parts.append(
            f"vs baseline: loss {row['loss_rel_diff']:.1e}, grad norm {row['grad_rel_diff']:.1e} rel. diff {verdict}"
        )
    if row["options"]["compile_encoders"] != "off":
        parts.append(
            f"{row['graph_breaks']} graph breaks, {row['graphs']} graphs, "
            f"{row['recompiles_after_first_step']} recompiles after step 1"
        )
    return f"{head} " + ", ".join(parts)


def best_options(path: Path) -> tuple[str, dict]:
    """The fastest variant of an earlier ``--json`` file whose check passed (never a NOT_PICKED one)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["ok"] and r["items_per_s"] and r["variant"] not in NOT_PICKED]
    if not rows:
        raise SystemExit(f"error: {path} has no variant that ran and matched the baseline; rerun the A/B stage")
    best = max(rows, key=lambda r: r["items_per_s"])
    return best["variant"], {k: v for k, v in best["options"].items() if BASELINE.get(k) != v}


def train_overrides(options: dict) -> str:
    """train.py overrides of ``options`` (what bench/gpu.sh passes to the train stage)."""
    return " ".join(f"model.{k}={json.dumps(v)}" for k, v in options.items())


def _setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if key not in BASELINE:
        raise argparse.ArgumentTypeError(f"--set {text}: known options are {sorted(BASELINE)}")
    return key, json.loads(value) if value in ("true", "false") else value


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
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=[*VARIANTS, "best"])
    ap.add_argument("--best-from", type=Path, help="the --json file that 'best' is picked from")
    ap.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="a ModelConfig speed option added to every variant, e.g. gradient_checkpointing=front_end",
    )
    ap.add_argument("--until-oom", action="store_true", help="stop at the first batch size that does not fit")
    ap.add_argument("--json", type=Path, help="append one JSON record per row")
    ap.add_argument("--print-best", type=Path, help="print train.py overrides of this --json file's best variant, exit")
    args = ap.parse_args()
    if args.print_best:
        print(train_overrides(best_options(args.print_best)[1]))
        return
    precision = args.precision or ("bf16" if args.device == "cuda" else "no")
    bench = Bench(args.preset, args.device, precision, args.stage, args.clip_seconds)
    names = (
        ["baseline", *[v for v in args.variants if v != "baseline"]] if "baseline" in args.variants else args.variants
    )
    for b in args.batch_size:
        for name in names:
            options = dict(VARIANTS.get(name, {}))
            if name == "best":
                if args.best_from is None:
                    ap.error("--variants best needs --best-from")
                name, options = best_options(args.best_from)
            options.update(args.set)
            name += "".join(f"+{k}={v}" for k, v in args.set)
            unavailable = _unavailable(options, bench.accelerator.device)
            if unavailable:
                print(
                    f"{args.preset} stage={args.stage} B={b} {name:<22} {bench.device_name}: skipped ({unavailable})",
                    flush=True,
                )
                continue
            try:
                row = bench.run(name, options, b, args.steps, args.warmup)
            except torch.OutOfMemoryError:
                print(
                    f"{args.preset} stage={args.stage} B={b} {name:<22} {bench.device_name}: out of memory", flush=True
                )
                bench.accelerator.free_memory()
                gc.collect()
                torch.cuda.empty_cache()
                if args.until_oom:
                    return
                continue
            print(describe(row), flush=True)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
