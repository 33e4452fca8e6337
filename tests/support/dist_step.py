"""One gathered training step on this process's slice of a fixed global batch.

Run as ``python tests/support/dist_step.py BATCH OUT STAGE`` (one process) or under
``accelerate launch --multi_gpu --num_processes N`` with ``ACCELERATE_USE_CPU=1`` and no visible
GPU (N CPU processes, N must divide the batch). The main
process writes the loss terms and every parameter gradient (after DDP's averaging) to OUT, so a
test can check that N processes compute exactly what one process computes on the global batch.
"""

import sys

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from model.config import ModelConfig
from model.factory import build_model
from training.config import TrainConfig
from training.step import pad_batch, step_loss


def main(batch_file: str, out_file: str, stage: str) -> None:
    accelerator = Accelerator(cpu=True)
    cfg = TrainConfig(model=ModelConfig.preset("tiny"), mosaic_prob=0.0, seed=0)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    # as training.loop wraps each stage: DDP over the parameters the stage trains, no search for
    # unused ones (which would also mark the temperature, used outside forward, ready twice)
    model.set_stage(stage)
    net = accelerator.prepare(model)

    full = load_file(batch_file)
    world, rank = accelerator.num_processes, accelerator.process_index
    per = full["speech_audio"].shape[0] // world
    local = {k: v[rank * per : (rank + 1) * per] for k, v in full.items()}
    local["speech_key"] = [f"item{rank * per + i}" for i in range(per)]
    local, local["valid"] = pad_batch(local, per, model.config.image_size, full["speech_audio"].shape[1])

    total, terms, items = step_loss(net, model, local, cfg, stage, step=0, accelerator=accelerator)
    accelerator.backward(total)
    if accelerator.is_main_process:
        out = {f"loss/{k}": v.reshape(1).float() for k, v in terms.items()}
        out["items"] = torch.tensor([items])
        out["processes"] = torch.tensor([world])
        out.update({f"grad/{n}": p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
        save_file(out, out_file)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:4])
