"""Validation during training: retrieval R@k on held-out shard sets (``val.*``), logged per head.

An evaluation experiment that the training command hands to the loop (``train(..., validate=...)``),
so the trainer itself never imports the evaluation package."""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator

from evaluation.retrieval import RetrievalSession
from evaluation.runner import ModelRunner
from pipeline.testsets.retrieval import read_retrieval_set


def validate(model, cfg, accelerator: Accelerator, step: int) -> dict:
    """Retrieval R@k on held-out shard sets (main process only; the others wait).

    ``cfg`` is the run's ``training.config.TrainConfig``; its ``val`` section names the sets."""
    logs = {}
    if accelerator.is_main_process:
        sets = {
            name: read_retrieval_set(Path(path), n=cfg.val.pairs)
            for name, path in (("places", cfg.val.speech), ("audioset", cfg.val.sound))
            if path
        }
        was_training = model.training
        session = RetrievalSession(ModelRunner(model, accelerator.device), sets, progress=False, workers=2)
        for name in sets:
            for head, directions in session.recalls(name).items():
                for direction, at_k in directions.items():
                    for k, value in at_k.items():
                        logs[f"val/{name}/{head}/{direction}@{k}"] = value
        model.train(was_training)
        accelerator.log(logs, step=step)
        accelerator.print(
            f"step {step} validation: "
            + ", ".join(
                f"{k.removeprefix('val/')}={v:.3f}"
                for k, v in logs.items()
                if k.endswith("total/A->I@10") or k.endswith("total/I->A@10")
            )
        )
    accelerator.wait_for_everyone()
    return logs
