"""`prep synthetic`: generate the built-in audio-visual world."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli_support import fail
from pipeline.prep.synthetic.generate import WorldExists, generate_world
from pipeline.prep.synthetic.world import SIZES, world_config

synthetic_app = typer.Typer(help="Generate the built-in audio-visual world (shards and test sets in the real formats).")


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@synthetic_app.callback(invoke_without_command=True)
def synthetic(
    out: Annotated[Path, typer.Option("--out", "-o", help="Root folder of the generated world.")] = Path(
        "shards/synthetic"
    ),
    seed: Annotated[int, typer.Option(min=0, help="World seed: the same seed gives the same files.")] = 0,
    size: Annotated[str, typer.Option(help=f"Preset: {', '.join(SIZES)}.")] = "demo",
    train: Annotated[
        int | None, typer.Option(min=1, help="Training samples per audio type (overrides the preset).")
    ] = None,
    val: Annotated[
        int | None, typer.Option(min=1, help="Retrieval pairs per audio type (overrides the preset).")
    ] = None,
    is3_images: Annotated[int | None, typer.Option(min=1, help="Extended-IS3 images (overrides the preset).")] = None,
    ade_images: Annotated[
        int | None, typer.Option(min=1, help="Images per ADE20K-layout set (overrides the preset).")
    ] = None,
    shard_size: Annotated[int | None, typer.Option(min=1, help="Samples per shard (overrides the preset).")] = None,
    music: Annotated[
        bool,
        typer.Option(
            "--music",
            help="Also generate a third audio type, music (each class a melody on its own instrument): "
            "shard sets music/train and music/val.",
        ),
    ] = False,
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=0, help="Worker processes (0 = in this process).")
    ] = _default_workers(),
    overwrite: Annotated[bool, typer.Option(help="Replace a world generated with another seed or size.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Generate shards (speech/sound, and music with --music; train/val), an Extended-IS3 tree and DenseAV ADE20K-layout
    sets of a small world of ten object classes, each with its own shape, colour, sound and name.

    A rerun with the same options resumes; world.json is written last.
    """
    overrides = {
        k: v
        for k, v in dict(
            train=train, val=val, is3_images=is3_images, ade_images=ade_images, shard_size=shard_size
        ).items()
        if v is not None
    }
    if music:
        overrides["music"] = True
    try:
        cfg = world_config(size, **overrides)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        world = generate_world(out, cfg, seed=seed, workers=workers, progress=progress, overwrite=overwrite)
    except WorldExists as exc:
        fail(str(exc))
    _print_summary(out, world)


def _print_summary(out: Path, world: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"generated world in {out} (seed {world['seed']}, {world['wall_seconds']:.0f} s)")
    for col in ("set", "format", "path", "items"):
        table.add_column(col)
    for name, info in world["sets"].items():
        count = info.get("items") or (
            f"{info['annotations']} annotations" if "annotations" in info else f"{info['rows']} rows"
        )
        table.add_row(name, info["format"], info["path"], str(count))
    console = Console(stderr=True)
    console.print(table)
    console.print(f"classes: {', '.join(c['name'] for c in world['classes'])}")
    console.print(f"paths are relative to {out}; everything is described in {out / 'world.json'}")
