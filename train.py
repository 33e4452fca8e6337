"""Train the mix-and-separate model (paper §3.3) from one CPU process to many GPUs.

    accelerate launch train.py --config configs/paper.yaml data.speech=shards/places/train \\
        data.sound=shards/audioset/unbalanced out_dir=runs/paper
    accelerate launch train.py --config configs/paper.yaml out_dir=runs/paper --resume

The loop, top to bottom: build model and optimizer -> (resume) -> for each step: set the stage
(warm-up: aligners + temperature on L_cor; then everything on L_cor + L_dis + regularizers), take
``grad_accum`` micro-batches from the streaming loader, encode them, gather features from every
process *with gradient* so the negatives span the global batch, compute the loss, backward, clip,
step with the learning rate of this step index, log, checkpoint.

Choices worth knowing:
* Negatives are the global micro-batch (processes × data.batch_size). With ``grad_accum > 1`` the
  gradients of several such contrastive batches are summed before a step: the optimizer sees
  processes × batch × accum items, each InfoNCE sees processes × batch candidates.
* Every process computes the same global loss; ``all_gather``'s backward sums the gradient of the
  local rows over processes and DDP averages, which gives exactly the single-process gradient on
  the global batch (tested with two CPU processes).
* The learning rate is a pure function of the step (linear warm-up, then constant): nothing to
  step, nothing to drift on resume. The webdataset loader is not passed to ``accelerator.prepare``:
  it already splits by rank.
* Resume is exact: the loader re-creates the same stream for (seed, epoch, rank, worker) and skips
  the batches already consumed without decoding them; torch RNG states are restored per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import typer
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.factory import build_model
from model.loss import LossWeights, mix_separate_loss
from model.regularizers import RegularizerWeights, make_mosaic
from pipeline.format import SAMPLE_RATE
from pipeline.data.loader import LoaderConfig, TrainLoader, seed_from
from pipeline.data.mixing import MaskConfig, MixConfig, SpliceConfig
from pipeline.data.transform import AugmentConfig

# ---------------------------------------------------------------------------------------------
# configuration


@dataclass
class DataConfig:
    speech: str = ""  # speech shard dirs / globs (PlacesAudio), comma-separated
    sound: str = ""  # sound shard dirs / globs (AudioSet)
    batch_size: int = 8  # per process and micro-step
    num_workers: int = 4
    clip_seconds: float = 10.0  # first N seconds of each 10 s clip
    resampled: bool = True  # False: every speech sample exactly once per epoch
    epoch_samples: Optional[int] = None
    shuffle_buffer: int = 1000
    snr_db: tuple[float, float] = (-5.0, 5.0)
    level_db: tuple[float, float] = (-35.0, -15.0)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    splice_prob: float = 0.0  # DenseAV negative-audio splicing (feeds the splice regularizer)
    mask_prob: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-7
    weight_decay: float = 0.0
    lr_warmup_steps: int = 1000  # linear from 0, then constant
    grad_clip: float = 10.0


@dataclass
class ValConfig:
    every: int = 0  # steps between validations; 0 = off
    speech: str = ""
    sound: str = ""
    pairs: int = 1000


@dataclass
class TrainConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})  # preset + ModelConfig fields
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: dict[str, Any] = field(default_factory=dict)  # LossWeights fields
    val: ValConfig = field(default_factory=ValConfig)
    steps: int = 800_000
    warmup_steps: int = 3_000  # stage 1: backbones frozen, aligners + temperature on L_cor
    grad_accum: int = 1
    mixed_precision: str = "auto"  # auto = bf16 on GPU, fp32 on CPU; or "no" / "bf16"
    mosaic_prob: float = 0.1  # DenseAV image mixup: a 2x2 mosaic replaces an image with this probability
    audio_init: str = ""  # safetensors of HuBERT backbone weights to start from (e.g. pretrain_audio.py's)
    seed: int = 0
    out_dir: str = "runs/default"
    log_every: int = 10
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    max_bad_steps: int = 5  # NaN/inf losses in a row before the run stops

    def model_config(self) -> ModelConfig:
        spec = dict(self.model)
        return ModelConfig.preset(spec.pop("preset", "paper"), **spec)


def _build(cls, data: dict, where: str = "config"):
    """Nested dicts -> dataclasses, rejecting unknown keys (a typo must not be silently ignored)."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise typer.BadParameter(f"unknown {where} keys {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            value = _build(sub, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value) if "tuple" in str(f.type) else value
        kwargs[name] = value
    return cls(**kwargs)


def _set(tree: dict, dotted: str, value: Any):
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _parse_value(text: str) -> Any:
    """YAML, plus numbers YAML 1.1 leaves as strings (``3e-3`` needs a dot there)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_config(path: Optional[Path], overrides: list[str]) -> TrainConfig:
    tree = yaml.safe_load(path.read_text()) if path else {}
    for item in overrides:
        if "=" not in item:
            raise typer.BadParameter(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        _set(tree, key, _parse_value(value))
    return _build(TrainConfig, tree or {})


# ---------------------------------------------------------------------------------------------
# pieces of the step


def configure_backends(device: torch.device) -> None:
    """Fast kernels on GPU: clips and images have fixed sizes, so cuDNN's autotuner pays off, and
    TF32 for the parts that stay in float32 under bf16 autocast."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def load_audio_backbone(model, path: str) -> None:
    """Start the audio backbone from saved HuBERT weights (the architecture must match)."""
    weights = load_file(path)
    weights.pop("masked_spec_embed", None)  # only exists when SpecAugment is on
    try:
        missing, unexpected = model.audio_encoder.backbone.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"{path} does not match the audio backbone: {str(exc)[:300]}") from None
    missing = [k for k in missing if k != "masked_spec_embed"]
    if missing or unexpected:
        raise ValueError(f"{path} does not match the audio backbone (missing {missing[:5]}, unexpected {unexpected[:5]})")


def lr_at(step: int, cfg: OptimConfig) -> float:
    if cfg.lr_warmup_steps <= 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step + 1) / cfg.lr_warmup_steps)


def make_loader(cfg: TrainConfig, image_size: int, rank: int, world: int) -> TrainLoader:
    d = cfg.data
    return TrainLoader(LoaderConfig(
        speech=d.speech, sound=d.sound, batch_size=d.batch_size, num_workers=d.num_workers,
        image_size=image_size, clip_samples=int(round(d.clip_seconds * SAMPLE_RATE)), train=True,
        resampled=d.resampled, epoch_samples=d.epoch_samples, shuffle_buffer=d.shuffle_buffer,
        seed=cfg.seed, augment=AugmentConfig(scale=tuple(d.crop_scale)),
        mix=MixConfig(snr_db=tuple(d.snr_db), level_db=tuple(d.level_db)),
        splice=SpliceConfig(prob=d.splice_prob), masking=MaskConfig(prob=d.mask_prob),
    ), rank=rank, world_size=world)


_TENSORS = ("sound_image", "speech_image", "sound_audio", "speech_audio", "mix_audio", "sound_mask",
            "speech_mask", "mix_mask", "sound_splice", "speech_splice")


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
    for name in _TENSORS:
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


def gather(x: torch.Tensor, world: int) -> torch.Tensor:
    """Concatenate a per-process tensor over processes, keeping the gradient of the local rows."""
    if world == 1:
        return x
    if x.dtype == torch.bool:
        return gather(x.to(torch.uint8), world).bool()
    if x.requires_grad:
        return torch.cat(torch.distributed.nn.functional.all_gather(x))
    parts = [torch.empty_like(x) for _ in range(world)]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def loss_weights(cfg: TrainConfig, stage: str) -> LossWeights:
    """The configured weights; the warm-up trains on L_cor (+ regularizers) only."""
    spec = dict(cfg.loss)
    regs = RegularizerWeights(**spec.pop("regularizers", {}))
    weights = LossWeights(regularizers=regs, **spec)
    return dataclasses.replace(weights, disentanglement=0.0) if stage == "warmup" else weights


def step_loss(net, model, batch: dict, cfg: TrainConfig, stage: str, step: int, accelerator: Accelerator):
    """Encode one micro-batch, gather it across processes, return (loss, terms, real items)."""
    world, device = accelerator.num_processes, accelerator.device
    # (a no-op for batches that the loader finished on the training device)
    inputs = {k: batch[k].to(device, non_blocking=True) for k in _TENSORS if k in batch}
    for kind in ("sound", "speech"):
        if stage == "full" and cfg.mosaic_prob > 0:
            g = torch.Generator().manual_seed(seed_from(cfg.seed, step, accelerator.process_index, kind))
            inputs[f"{kind}_image"], inputs[f"{kind}_image_foreign"] = make_mosaic(inputs[f"{kind}_image"], g, cfg.mosaic_prob)
    feats = net(inputs, include_mix=(stage == "full"))

    keep = gather(batch["valid"].to(device), world).nonzero().squeeze(1)
    feats = {name: gather(x, world)[keep] for name, x in feats.items()}
    # same draws on every process: each computes the identical global loss
    g = torch.Generator().manual_seed(seed_from(cfg.seed, step, "loss"))
    total, terms = mix_separate_loss(
        feats, model.logit_scale(), loss_weights(cfg, stage), sound_head=model.config.sound_head,
        speech_head=model.config.speech_head, logit_scale_init=model.config.logit_scale_init, generator=g)
    return total, terms, int(keep.numel())


# ---------------------------------------------------------------------------------------------
# checkpoints


def _ckpt_dirs(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("step_*[0-9]"), key=lambda p: int(p.name.split("_")[1]))


def save_training_state(out: Path, step: int, state: dict, model, optimizer, accelerator: Accelerator, keep: int):
    """checkpoints/step_N/: model (safetensors + JSON), optimizer, trainer state, RNG per process.

    Written into step_N.tmp and renamed when complete, so a kill never leaves a half checkpoint
    that --resume would pick up.
    """
    final = out / "checkpoints" / f"step_{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / f"rng_{accelerator.process_index}.safetensors"))
    if accelerator.is_main_process:
        save_checkpoint(model, tmp / "model")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in _ckpt_dirs(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_training_state(ckpt: Path, model, optimizer, accelerator: Accelerator) -> dict:
    from safetensors.torch import load_file as load_tensors

    state_dict = load_tensors(str(ckpt / "model" / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise RuntimeError(f"{ckpt}: checkpoint does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
    rng_file = ckpt / f"rng_{accelerator.process_index}.safetensors"
    if rng_file.exists():
        rng = load_file(str(rng_file))
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((ckpt / "trainer_state.json").read_text())


# ---------------------------------------------------------------------------------------------
# the loop


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    out = Path(cfg.out_dir)
    on_gpu = torch.cuda.is_available()
    precision = ("bf16" if on_gpu else "no") if cfg.mixed_precision == "auto" else cfg.mixed_precision
    accelerator = Accelerator(
        mixed_precision=precision, log_with="tensorboard", project_dir=str(out),
        # the warm-up freezes the backbones: DDP must tolerate parameters without gradient
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.warmup_steps > 0)],
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    configure_backends(accelerator.device)
    if accelerator.device.type == "cpu":
        # Leave the loader workers their cores: OpenMP threads spinning against busy workers
        # slow CPU steps down by an order of magnitude.
        cores = max(1, (os.cpu_count() or 1) // accelerator.num_processes)
        torch.set_num_threads(max(1, cores - cfg.data.num_workers))
    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    model_cfg = cfg.model_config()
    model = build_model(model_cfg)
    if cfg.audio_init and not resume:
        load_audio_backbone(model, cfg.audio_init)
    model.set_stage("full")  # DDP registers every parameter that will ever train...
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                                 weight_decay=cfg.optim.weight_decay)
    net, optimizer = accelerator.prepare(model, optimizer)
    loss_weights(cfg, "full")  # fail early on a bad loss config

    state = {"step": 0, "micro_step": 0, "bad_steps_total": 0}
    if resume:
        ckpts = _ckpt_dirs(out)
        if not ckpts:
            raise SystemExit(f"--resume: no checkpoint under {out / 'checkpoints'}; start without --resume")
        state = load_training_state(ckpts[-1], model, optimizer, accelerator)
        accelerator.print(f"resumed from {ckpts[-1]} at step {state['step']}")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(cfg))), sort_keys=False))
        (out / "model_config.json").write_text(model_cfg.to_json())
    accelerator.init_trackers("train", config=_flat_scalars(dataclasses.asdict(cfg)))

    loader = make_loader(cfg, model_cfg.image_size, rank, world)
    per_epoch = len(loader)
    clip = int(round(cfg.data.clip_seconds * SAMPLE_RATE))

    def batches(micro_step: int):
        """Endless micro-batches starting at a global micro-step (exact resume)."""
        epoch, offset = divmod(micro_step, per_epoch)
        while True:
            loader.set_epoch(epoch)
            yield from loader.iterate(skip=offset, device=accelerator.device)  # finished on the device
            epoch, offset = epoch + 1, 0

    stream = batches(state["micro_step"])
    step, bad_in_row = state["step"], 0
    state_start = step
    timer = Counter()
    last_log, items_since = time.perf_counter(), 0
    run = Counter()  # whole-run throughput for summary.json (from the second step: the first pays start-up)
    bar = tqdm(total=cfg.steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    parts = {}
    while step < cfg.steps:
        stage = "warmup" if step < cfg.warmup_steps else "full"
        model.set_stage(stage)
        lr = lr_at(step, cfg.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        finite, step_items = True, 0
        for micro in range(cfg.grad_accum):
            t0 = time.perf_counter()
            batch = next(stream)
            state["micro_step"] += 1
            t1 = time.perf_counter()
            size = int(accelerator.gather(torch.tensor([len(batch.get("speech_key", []))], device=accelerator.device)).max())
            batch, batch["valid"] = pad_batch(batch, max(size, 1), model_cfg.image_size, clip)
            sync = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(net):
                with accelerator.autocast():
                    total, parts, n_items = step_loss(net, model, batch, cfg, stage, step, accelerator)
                ok = bool(torch.isfinite(total)) and n_items >= 2
                finite = finite and ok
                if ok:
                    accelerator.backward(total / cfg.grad_accum)
            step_items += n_items
            timer["data"] += t1 - t0
            timer["compute"] += time.perf_counter() - t1
            if step > state_start:
                run["data_s"] += t1 - t0
                run["compute_s"] += time.perf_counter() - t1
                run["items"] += n_items
        grad_norm = torch.tensor(float("nan"))
        if finite:
            grad_norm = accelerator.clip_grad_norm_(trainable, cfg.optim.grad_clip)
            finite = bool(torch.isfinite(grad_norm))
        if finite:
            optimizer.step()
            bad_in_row = 0
        else:
            optimizer.zero_grad(set_to_none=True)
            bad_in_row += 1
            state["bad_steps_total"] += 1
            accelerator.print(f"step {step}: non-finite loss or gradient (or < 2 items), step skipped "
                              f"({bad_in_row} in a row, {state['bad_steps_total']} in total)")
            if bad_in_row >= cfg.max_bad_steps:
                raise RuntimeError(
                    f"{bad_in_row} steps in a row had a non-finite loss/gradient (last at step {step}); "
                    "stopping. Check the data (prep inspect --verify) and lower optim.lr, or resume "
                    "from the last checkpoint.")
        step += 1
        items_since += step_items
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            logs = {f"loss/{k}": float(v) for k, v in parts.items()}
            logs.update({"lr": lr, "temperature": float(model.logit_scale().detach()),
                         "grad_norm": float(grad_norm), "items_per_s": items_since / max(now - last_log, 1e-9),
                         "time/data_s": timer["data"], "time/compute_s": timer["compute"],
                         "bad_steps_total": state["bad_steps_total"],
                         "data/skipped_samples": sum(loader.skipped.values())})
            accelerator.log(logs, step=step)
            bar.set_postfix(loss=f"{float(total.detach()):.3f}", stage=stage, lr=f"{lr:.1e}")
            last_log, items_since, timer = now, 0, Counter()
        if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
            save_training_state(out, step, state, model, optimizer, accelerator, cfg.keep_checkpoints)
        if cfg.val.every and step % cfg.val.every == 0:
            _validate(model, cfg, accelerator, step)
    bar.close()
    state["step"] = step
    save_training_state(out, step, state, model, optimizer, accelerator, cfg.keep_checkpoints)
    if accelerator.is_main_process:
        save_checkpoint(model, out / "final")
        seconds = run["data_s"] + run["compute_s"]
        summary = {"step": step, "bad_steps_total": state["bad_steps_total"],
                   "items_per_s": round(run["items"] / seconds, 2) if seconds else None,
                   "data_wait_fraction": round(run["data_s"] / seconds, 3) if seconds else None,
                   "skipped_samples": dict(loader.skipped), "final_model": str(out / "final"),
                   "last_loss": {k: float(v) for k, v in parts.items()}}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        accelerator.print(f"done: {step} steps, final model in {out / 'final'}")
    accelerator.end_training()
    return state


def _validate(model, cfg: TrainConfig, accelerator: Accelerator, step: int) -> dict:
    """Retrieval R@k on held-out shard sets (main process only; the others wait)."""
    logs = {}
    if accelerator.is_main_process:
        from pipeline.testsets.retrieval import read_retrieval_set
        from evaluation.retrieval import RetrievalSession
        from evaluation.runner import ModelRunner

        sets = {name: read_retrieval_set(Path(path), n=cfg.val.pairs)
                for name, path in (("places", cfg.val.speech), ("audioset", cfg.val.sound)) if path}
        was_training = model.training
        session = RetrievalSession(ModelRunner(model, accelerator.device), sets, progress=False, workers=2)
        for name in sets:
            for head, directions in session.recalls(name).items():
                for direction, at_k in directions.items():
                    for k, value in at_k.items():
                        logs[f"val/{name}/{head}/{direction}@{k}"] = value
        model.train(was_training)
        accelerator.log(logs, step=step)
        accelerator.print(f"step {step} validation: " + ", ".join(
            f"{k.removeprefix('val/')}={v:.3f}" for k, v in logs.items() if k.endswith("total/A->I@10") or k.endswith("total/I->A@10")))
    accelerator.wait_for_everyone()
    return logs


def _flat_scalars(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flat_scalars(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            flat[key] = v
        else:
            flat[key] = str(v)
    return flat


app = typer.Typer(add_completion=False)


@app.command()
def main(
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. data.batch_size=16"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", exists=True, help="YAML preset (configs/*.yaml)"),
    resume: bool = typer.Option(False, help="continue from the newest checkpoint in out_dir"),
):
    """Train; the effective configuration is written to <out_dir>/config.yaml."""
    train(load_config(config, overrides or []), resume=resume)


if __name__ == "__main__":
    app()
