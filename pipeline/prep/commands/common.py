"""The command-line pieces every `prep shards <corpus>` command and `prep retry` share: the Typer
option types, the engine choice, the summary table, and the build call behind them (the one-line
error is ``pipeline.cli_support.fail``)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli_support import fail
from pipeline.prep.build import build_shards, parse_part
from pipeline.prep.ray_engine import RayOptions
from pipeline.prep.shard import BuildSummary

# a string, not a Path: Path("s3://bucket/p") would drop a slash; pipeline.storage reads it
OutOpt = Annotated[
    str, typer.Option("--out", "-o", help="Output directory for the shards: a local path or s3://bucket/prefix.")
]
WorkersOpt = Annotated[
    int, typer.Option("--workers", "-w", min=0, help="Worker processes (about one per core; 0 = in this process).")
]
PartOpt = Annotated[
    str, typer.Option("--part", help="Build only shards with index % N == I, as I/N (e.g. a Slurm array task).")
]
ShardSizeOpt = Annotated[int, typer.Option("--shard-size", min=1, help="Input items per shard.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N input items (trial runs).")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]


class Engine(str, enum.Enum):
    local = "local"
    ray = "ray"


EngineOpt = Annotated[
    Engine,
    typer.Option(
        "--engine",
        help="Where items run: this machine's process pool, or one Ray task per shard (docs/prep-on-ray.md).",
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="With --engine ray: a running cluster (auto or HOST:PORT); default: start Ray here with --workers CPUs.",
    ),
]
RayTaskCpusOpt = Annotated[
    float,
    typer.Option(
        "--ray-task-cpus",
        min=0.01,
        help="With --engine ray: CPUs one shard task reserves (0.25: four downloads per core).",
    ),
]


def ray_options(engine: Engine, address: str | None, workers: int, task_cpus: float, **extra) -> RayOptions | None:
    """The Ray engine's options, or None for the local engine."""
    if engine != Engine.ray:
        if address is not None:
            fail("--ray-address needs --engine ray")
        return None
    return RayOptions(address=address, num_cpus=max(workers, 1), cpus_per_task=task_cpus, **extra)


def print_summary(summary: BuildSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"shards in {summary.out_dir}", show_header=False)
    rate = summary.items_processed / summary.wall_seconds if summary.wall_seconds else 0.0
    table.add_row(
        "shards built / skipped (done before) / in part",
        f"{summary.shards_built} / {summary.shards_skipped} / {summary.shards_selected}",
    )
    table.add_row("items processed", f"{summary.items_processed}  ({rate:.1f} clips/s)")
    table.add_row("written / failed", f"{summary.written} / {summary.failed}")
    table.add_row("audio hours written", f"{summary.audio_hours:.3f}")
    for kind, n in sorted(summary.failures.items(), key=lambda kv: -kv[1]):
        table.add_row(f"  failed: {kind}", str(n))
    table.add_row("wall time", f"{summary.wall_seconds:.1f} s")
    Console(stderr=True).print(table)


def run_build(
    items,
    load,
    out: str | Path,
    *,
    key,
    workers,
    part,
    shard_size,
    limit,
    progress,
    desc,
    input_warnings=None,
    ray: RayOptions | None = None,
) -> BuildSummary:
    """What every `prep shards <corpus>` command does once it has its items and loader;
    ``input_warnings`` (what the reader noticed about its input) goes into dataset.json."""
    try:
        part_tuple = parse_part(part)
    except ValueError as exc:
        fail(str(exc))
    if limit is not None:
        items = items[:limit]
    try:
        summary = build_shards(
            items,
            load,
            out,
            key=key,
            shard_size=shard_size,
            workers=workers,
            part=part_tuple,
            desc=desc,
            progress=progress,
            input_warnings=input_warnings,
            ray=ray,
        )
    except ValueError as exc:  # e.g. a resume over shards built from other input; a store that refuses
        fail(str(exc))
    print_summary(summary)
    return summary
