"""The training loop (paper §3.3), from one CPU process to many GPUs.

Top to bottom: build model and optimizer -> (resume) -> for each step: set the stage (warm-up:
aligners + temperature on L_cor; then everything on L_cor + L_dis + regularizers), take
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
* Under DDP each stage has its own wrapper over the parameters that stage trains (``_stage_net``):
  the warm-up's holds the aligners and the temperature alone, so DDP neither reduces the frozen
  backbones' empty gradients nor searches the graph for parameters without one
  (``find_unused_parameters`` stays off unless HuBERT's layerdrop skips layers); the full stage's
  wrapper is built at the switch, or at once by a run resumed after the warm-up.
* The learning rate is a pure function of the step (linear warm-up, then constant): nothing to
  step, nothing to drift on resume. The webdataset loader is not passed to ``accelerator.prepare``:
  it already splits by rank.
* Resume is exact, skipped samples included: the loader re-creates the same stream for (seed,
  epoch, rank, worker) and each worker fast-forwards to the cursor of its last consumed batch
  without decoding; torch RNG states are restored per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import DistributedDataParallelKwargs, gather_object
from torch.nn.parallel import DistributedDataParallel

from model.checkpoint import save_checkpoint
from model.factory import build_model, compile_encoders
from pipeline.atomic import write_json
from pipeline.data.loader import TrainLoader
from pipeline.progress import progress_bar
from training.config import ConfigError, TrainConfig, config_tree, flat_scalars
from training.finetune import param_groups, read_record, start_from, write_record
from training.meter import Meter
from training.state import checkpoint_dirs, load_audio_backbone, load_training_state, save_training_state
from training.step import batch_items, configure_backends, lr_at, pad_batch, step_loss


class TrainingStopped(RuntimeError):
    """The run cannot go on (e.g. non-finite steps in a row); the message says what to do."""


def train(cfg: TrainConfig, resume: bool = False, validate: Callable | None = None) -> dict:
    """Run ``cfg``; ``validate(model, cfg, accelerator, step)`` is called every ``val.every`` steps
    (train.py passes evaluation.validation.validate)."""
    out = Path(cfg.out_dir)
    log_with = trackers(cfg.log_with)  # a missing tracker package stops the run before anything loads
    ckpt = _last_checkpoint(out) if resume else None
    first_step = json.loads((ckpt / "trainer_state.json").read_text())["step"] if ckpt else 0
    accelerator = _accelerator(cfg, out, log_with)
    model, net, optimizer, trainable = _model_and_optimizer(cfg, accelerator, resume, _stage_at(cfg, first_step))
    data = dataclasses.replace(cfg.data, image_size=cfg.model.image_size, seed=cfg.seed, train=True)
    loader = TrainLoader(data, rank=accelerator.process_index, world_size=accelerator.num_processes)
    state = {"step": 0, "micro_step": 0, "bad_steps_total": 0}
    if ckpt:
        state = _resume(ckpt, model, optimizer, loader, accelerator)
    _write_run_files(cfg, out, accelerator)

    stream = _micro_batches(loader, state["micro_step"], accelerator.device)
    step, bad_in_row, parts = state["step"], 0, {}
    meter = Meter(count_from=step + 1)
    with progress_bar(cfg.steps, "train", accelerator.is_local_main_process, initial=step) as bar:
        while step < cfg.steps:
            stage = _stage_at(cfg, step)
            if stage != model.stage:
                net = _stage_net(accelerator, net, model, stage)
                gc.collect()  # the previous wrapper goes now, with the hooks its reducer put on the aligners
            model.set_stage(stage)
            lr = lr_at(step, cfg.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # (optim.backbone_lr_scale: training/finetune.py)
            start = time.perf_counter()
            total, parts, finite, data_s, n_items = _accumulate(
                cfg, net, model, optimizer, stream, state, stage, step, accelerator
            )
            grad_norm = torch.tensor(float("nan"))
            if finite is not None:
                grad_norm = accelerator.clip_grad_norm_(trainable, cfg.optim.grad_clip)
                # the step's one host sync: every loss and the gradient norm finite
                finite = bool(finite & torch.isfinite(grad_norm))
            meter.add(step, data_s, time.perf_counter() - start - data_s, n_items)
            if finite:
                optimizer.step()
                bad_in_row = 0
            else:
                optimizer.zero_grad(set_to_none=True)
                bad_in_row += 1
                state["bad_steps_total"] += 1
                _bad_step(cfg, step, bad_in_row, state, accelerator)
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                logs = {f"loss/{k}": float(v) for k, v in parts.items()}
                logs.update(
                    {
                        "lr": lr,
                        "temperature": float(model.logit_scale().detach()),
                        "grad_norm": float(grad_norm),
                        **meter.window(),
                        "bad_steps_total": state["bad_steps_total"],
                        "data/skipped_samples": sum(_run_skips(loader, accelerator).values()),
                    }
                )
                accelerator.log(logs, step=step)
                bar.set_postfix(loss=f"{float(total.detach()):.3f}", stage=stage, lr=f"{lr:.1e}")
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
                save_training_state(
                    out, step, state, loader.state(), model, optimizer, accelerator, cfg.keep_checkpoints
                )
            if validate is not None and cfg.val.every and step % cfg.val.every == 0:
                validate(model, cfg, accelerator, step)
    state["step"] = step
    save_training_state(out, step, state, loader.state(), model, optimizer, accelerator, cfg.keep_checkpoints)
    skipped = _run_skips(loader, accelerator)
    if accelerator.is_main_process:
        init_record = read_record(out)  # the checkpoint a fine-tuning run started from (init_from)
        save_checkpoint(model, out / "final", meta={"init_from": init_record} if init_record else None)
        summary = {
            **({"init_from": init_record} if init_record else {}),
            "step": step,
            "bad_steps_total": state["bad_steps_total"],
            **meter.summary(),
            "skipped_samples": dict(skipped),
            "final_model": str(out / "final"),
            "last_loss": {k: float(v) for k, v in parts.items()},
        }
        write_json(out / "summary.json", summary, indent=2, sort_keys=False)
        accelerator.print(f"done: {step} steps, final model in {out / 'final'}")
    # DDP's wrapper goes before end_training destroys the process group: freed after it, its
    # reducer would drop the group's last reference, and gloo's teardown (waiting for its worker
    # threads while they wait for the GIL) hung one process in several runs
    del net
    gc.collect()
    accelerator.end_training()
    return state


def _accumulate(cfg, net, model, optimizer, stream, state, stage, step, accelerator):
    """Zero the gradients, then forward and backward ``grad_accum`` micro-batches.

    Returns (the last loss, its terms, a device bool: every loss finite -- None when a micro-batch
    had < 2 items, seconds waiting for data, items). Nothing here waits for the device: a
    non-finite loss gives a non-finite gradient norm, and the caller checks both in one read.
    """
    finite, data_s, items = torch.ones((), dtype=torch.bool, device=accelerator.device), 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    for micro in range(cfg.grad_accum):
        t0 = time.perf_counter()
        batch = next(stream)
        state["micro_step"] += 1
        data_s += time.perf_counter() - t0
        batch, batch["valid"] = pad_batch(
            batch, _padded_size(cfg, batch, accelerator), cfg.model.image_size, cfg.data.clip_samples, cfg.data.types
        )
        sync = micro == cfg.grad_accum - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(net):
            with accelerator.autocast():
                total, parts, n_items = step_loss(net, model, batch, cfg, stage, step, accelerator)
            items += n_items
            if n_items < 2:  # no contrast to learn from: the step is skipped
                finite = None
            elif finite is not None:
                finite = finite & torch.isfinite(total.detach())
                accelerator.backward(total / cfg.grad_accum)
    return total, parts, finite, data_s, items


def _padded_size(cfg: TrainConfig, batch: dict, accelerator: Accelerator) -> int:
    """Items every process's micro-batch is padded to. One process needs no padding; several pad
    to the configured batch size (finite epochs end with shorter batches), which every process
    knows without a gather of the sizes and the host sync it costs."""
    n = batch_items(batch)
    if accelerator.num_processes == 1:
        return max(n, 1)
    if n > cfg.data.batch_size:
        raise ValueError(f"a micro-batch of {n} items exceeds data.batch_size={cfg.data.batch_size}")
    return cfg.data.batch_size


def _bad_step(cfg: TrainConfig, step: int, bad_in_row: int, state: dict, accelerator: Accelerator):
    accelerator.print(
        f"step {step}: non-finite loss or gradient (or < 2 items), step skipped "
        f"({bad_in_row} in a row, {state['bad_steps_total']} in total)"
    )
    if bad_in_row >= cfg.max_bad_steps:
        raise TrainingStopped(
            f"{bad_in_row} steps in a row had a non-finite loss/gradient (last at step {step}); "
            "stopping. Check the data (prep inspect --verify) and lower optim.lr, or resume "
            "from the last checkpoint."
        )


def _stage_at(cfg: TrainConfig, step: int) -> str:
    return "warmup" if step < cfg.warmup_steps else "full"


def trackers(names: list[str]) -> list[str] | None:
    """``log_with`` as Accelerate takes it (None: no tracker), after checking that each named
    tracker's package is installed: Accelerate would drop a missing one silently, and the run
    would train for days without the logs it was configured to write."""
    if "none" in names:
        if len(names) > 1:
            raise ConfigError(
                f"log_with: none logs nothing and cannot be combined with other trackers, got {names}", "log_with"
            )
        return None
    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name != "all" and name not in available:  # each tracker's package has the tracker's name
            raise ConfigError(
                f"log_with: the {name} tracker needs the package {name}, which is not installed; "
                f"pip install {name}, or pick another tracker (log_with=tensorboard, or none)",
                "log_with",
            )
    return list(names)


def _accelerator(cfg: TrainConfig, out: Path, log_with: list[str] | None) -> Accelerator:
    on_gpu = torch.cuda.is_available()
    precision = ("bf16" if on_gpu else "no") if cfg.mixed_precision == "auto" else cfg.mixed_precision
    accelerator = Accelerator(
        mixed_precision=precision,
        log_with=log_with,
        project_dir=str(out),
        # Each stage's DDP wrapper holds only what that stage trains (_stage_net), so every one of
        # its parameters gets a gradient each step, unless HuBERT's layerdrop skips whole layers.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.model.audio_layerdrop > 0)],
    )
    configure_backends(accelerator.device)
    if accelerator.device.type == "cpu":
        # Leave the loader workers their cores: OpenMP threads spinning against busy workers
        # slow CPU steps down by an order of magnitude.
        cores = max(1, (os.cpu_count() or 1) // accelerator.num_processes)
        torch.set_num_threads(max(1, cores - cfg.data.num_workers))
    return accelerator


def _model_and_optimizer(cfg: TrainConfig, accelerator: Accelerator, resume: bool, stage: str):
    """The model, its wrapper for ``stage`` (the first step's), the optimizer and its parameters."""
    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    model = build_model(cfg.model)
    if cfg.audio_init and not resume:
        load_audio_backbone(model, cfg.audio_init)
    if not resume:  # a resumed run has its own weights, init_from's record already
        init_record = start_from(model, cfg, accelerator.is_main_process) if cfg.init_from else None
        if accelerator.is_main_process:
            write_record(Path(cfg.out_dir), init_record)
    model.freeze(cfg.freeze)
    compile_encoders(model)  # (off unless model.compile_encoders names a mode)
    model.set_stage("full")  # the optimizer holds every parameter that will ever train...
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        param_groups(model, trainable, cfg.optim),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )
    model.set_stage(stage)  # ...DDP those of the first step's stage (_stage_net)
    net, optimizer = accelerator.prepare(model, optimizer)
    _say_wrapped(accelerator, net, stage)
    return model, net, optimizer, trainable


def _stage_net(accelerator: Accelerator, net, model, stage: str):
    """``net`` for ``stage``: one process trains the model itself; under DDP a new wrapper
    registers the parameters ``stage`` trains (DDP reduces exactly the parameters that required a
    gradient when it was built, and waits for each of them every step)."""
    model.set_stage(stage)
    if not isinstance(net, DistributedDataParallel):
        return net
    handler = accelerator.ddp_handler
    wrapped = DistributedDataParallel(
        model, device_ids=net.device_ids, output_device=net.output_device, **(handler.to_kwargs() if handler else {})
    )
    if handler:
        handler.register_comm_hook(wrapped)
    _say_wrapped(accelerator, wrapped, stage)
    return wrapped


def _say_wrapped(accelerator: Accelerator, net, stage: str):
    if isinstance(net, DistributedDataParallel):
        tensors = sum(p.requires_grad for p in net.module.parameters())
        accelerator.print(
            f"{stage} stage: DDP over its {tensors} trainable parameter tensors "
            f"(find_unused_parameters={net.find_unused_parameters})"
        )


def _last_checkpoint(out: Path) -> Path:
    ckpts = checkpoint_dirs(out)
    if not ckpts:
        raise FileNotFoundError(f"--resume: no checkpoint under {out / 'checkpoints'}; start without --resume")
    return ckpts[-1]


def _resume(ckpt: Path, model, optimizer, loader: TrainLoader, accelerator: Accelerator) -> dict:
    state, loader_state = load_training_state(ckpt, model, optimizer, accelerator)
    if loader_state is not None:
        loader.restore(loader_state)
    accelerator.print(f"resumed from {ckpt} at step {state['step']}")
    return state


def _write_run_files(cfg: TrainConfig, out: Path, accelerator: Accelerator):
    tree = config_tree(cfg)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
        (out / "model_config.json").write_text(cfg.model.to_json())
    accelerator.init_trackers("train", config=flat_scalars(tree))


def _micro_batches(loader: TrainLoader, micro_step: int, device):
    """Endless micro-batches starting at a global micro-step (exact resume), finished on ``device``."""
    epoch, offset = divmod(micro_step, len(loader))
    while True:
        loader.set_epoch(epoch)
        yield from loader.iterate(skip=offset, device=device)
        epoch, offset = epoch + 1, 0


def _run_skips(loader: TrainLoader, accelerator: Accelerator) -> Counter:
    """Samples skipped so far by every process's loader, by reason (a collective: all call it)."""
    total: Counter = Counter()
    for counts in gather_object([dict(loader.skipped)]) if accelerator.num_processes > 1 else [loader.skipped]:
        total.update(counts)
    return total
