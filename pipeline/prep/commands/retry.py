"""`prep retry DIR`: re-run the failed rows of a shard directory (``pipeline.prep.retry``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline import storage
from pipeline.cli_support import fail
from pipeline.prep.commands.common import (
    Engine,
    EngineOpt,
    ProgressOpt,
    RayAddressOpt,
    RayTaskCpusOpt,
    WorkersOpt,
    print_summary,
    ray_options,
)
from pipeline.prep.retry import retry_failed


def command(
    out_dir: Annotated[
        str, typer.Argument(help="A shard directory built by `prep shards ...` (a local path or s3://bucket/prefix).")
    ],
    reason: Annotated[
        list[str] | None,
        typer.Option("--reason", "-r", help="Retry only failures of this kind (repeatable), e.g. rate_limited."),
    ] = None,
    workers: WorkersOpt = 1,
    progress: ProgressOpt = True,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    ray_task_cpus: RayTaskCpusOpt = 1.0,
    downloads_per_second: Annotated[
        float | None,
        typer.Option(min=0.001, help="With --engine ray: downloads started per second over the whole cluster."),
    ] = None,
) -> None:
    """Re-run only the failed rows of a shard directory and rewrite the shards they belong to."""
    if downloads_per_second is not None and engine != Engine.ray:
        fail("--downloads-per-second paces a Ray build (--engine ray)")
    extra = {"download_rate": downloads_per_second} if downloads_per_second else {}
    ray = ray_options(engine, ray_address, workers, ray_task_cpus, **extra)
    try:
        out = storage.location(out_dir)
        if isinstance(out, Path) and not out.is_dir():
            fail(f"{out} is not a directory: give a shard directory built by `prep shards ...`")
        summary = retry_failed(out, kinds=reason, workers=workers, progress=progress, ray=ray)
    except ValueError as exc:
        fail(str(exc))
    print_summary(summary)
