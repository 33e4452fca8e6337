"""`prep retry DIR`: re-run the failed rows of a shard directory (``pipeline.prep.retry``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.prep.commands.common import (
    Engine, EngineOpt, ProgressOpt, RayAddressOpt, RayTaskCpusOpt, WorkersOpt, fail, print_summary, ray_options,
)
from pipeline.prep.retry import retry_failed


def command(
    out_dir: Annotated[Path, typer.Argument(help="A shard directory built by `prep shards ...`.", exists=True, file_okay=False)],
    reason: Annotated[
        list[str] | None, typer.Option("--reason", "-r", help="Retry only failures of this kind (repeatable), e.g. rate_limited.")
    ] = None,
    workers: WorkersOpt = 1,
    progress: ProgressOpt = True,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    ray_task_cpus: RayTaskCpusOpt = 1.0,
    downloads_per_second: Annotated[
        float | None, typer.Option(min=0.001, help="With --engine ray: downloads started per second over the whole cluster.")
    ] = None,
) -> None:
    """Re-run only the failed rows of a shard directory and rewrite the shards they belong to."""
    if downloads_per_second is not None and engine != Engine.ray:
        raise fail("--downloads-per-second paces a Ray build (--engine ray)")
    extra = {"download_rate": downloads_per_second} if downloads_per_second else {}
    ray = ray_options(engine, ray_address, workers, ray_task_cpus, **extra)
    try:
        summary = retry_failed(out_dir, kinds=reason, workers=workers, progress=progress, ray=ray)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    print_summary(summary)
