"""`prep shards manifest` and `prep shards videos`: your own rows or a folder of videos -> one shard
directory per audio type, ``OUT/<type>/``, read by ``pipeline.prep.generic``."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Annotated

import typer

from pipeline import storage
from pipeline.cli_support import fail, with_options
from pipeline.prep import generic
from pipeline.prep.commands.options import BuildOptions


def _type_option(name: str | None, flag: str = "--type") -> str | None:
    if name is None:
        return None
    try:
        return generic.check_type(name, flag)
    except ValueError as exc:
        fail(str(exc))


@with_options
def manifest_command(
    manifest: Annotated[
        Path,
        typer.Option(
            "--manifest", "-m", help="Rows to build: a .csv, .jsonl or .parquet file (columns in docs/format.md)."
        ),
    ],
    root: Annotated[
        Path | None,
        typer.Option(help="Folder the manifest's paths are relative to. Default: the manifest's folder."),
    ] = None,
    audio_type: Annotated[
        str | None, typer.Option("--type", help="Audio type of the rows that give none (speech, sound, music, ...).")
    ] = None,
    *,
    opts: BuildOptions,
) -> None:
    """Your own rows (audio or video, picture, range, type, caption, class) -> OUT/<type>/ shards."""
    default_type = _type_option(audio_type)
    try:
        items = generic.read_manifest(manifest, default_type=default_type)
    except generic.ManifestError as exc:
        fail(str(exc))
    root = root if root is not None else manifest.parent
    if not root.is_dir():
        fail(f"--root {root} is not a directory (the folder the manifest's paths are relative to)")
    build_by_type(items, root, opts, desc="manifest")


@with_options
def videos_command(
    folder: Annotated[Path, typer.Argument(help="A folder of videos (searched recursively), e.g. VGGSound's clips.")],
    audio_type: Annotated[
        str, typer.Option("--type", help="The audio type of every video's sound track (sound, music, speech, ...).")
    ],
    class_from_folder: Annotated[
        bool,
        typer.Option(help="Take each video's class from the first folder below FOLDER that holds it (dog/x.mp4)."),
    ] = False,
    *,
    opts: BuildOptions,
) -> None:
    """A folder of videos -> OUT/<type>/ shards: each clip, or each 10 s segment of a longer video,
    with the frame at its middle."""
    audio_type = _type_option(audio_type)
    if not folder.is_dir():
        fail(f"{folder} is not a directory: give a folder of videos")
    try:
        items, warnings = generic.list_videos(
            folder, audio_type=audio_type, class_from_folder=class_from_folder, threads=2 * max(1, opts.workers)
        )
    except generic.ManifestError as exc:
        fail(str(exc))
    if "files_not_videos" in warnings:
        typer.echo(f"{warnings['files_not_videos']} file(s) under {folder} are not videos and were not read", err=True)
    if "remainders_left_out" in warnings:
        left = warnings["remainders_left_out"]
        typer.echo(
            f"{left['videos']} video(s) end in less than {generic.MIN_REMAINDER_S:g} s after their last 10 s "
            f"segment: {left['seconds']:g} s left out",
            err=True,
        )
    build_by_type(items, folder, opts, desc="videos", input_warnings=warnings)


def build_by_type(
    items: list[dict], root: Path, opts: BuildOptions, *, desc: str, input_warnings: dict | None = None
) -> None:
    """Build ``OUT/<type>/`` for each type among the (first ``--limit``) items, in turn, with the
    options of the command; rows without a usable type are counted in ``OUT/_untyped/``."""
    try:
        out = storage.location(opts.out)
    except storage.StorageError as exc:
        fail(str(exc))
    if opts.limit is not None:
        items = items[: opts.limit]
    load = functools.partial(generic.load_item, root=str(root.resolve()))
    groups = generic.group_by_type(items)
    for audio_type, group in groups.items():
        where = out / audio_type
        typer.echo(f"{audio_type}: {len(group)} item(s) -> {where}", err=True)
        # --limit already applied to the rows as a whole
        each = dataclasses.replace(opts, out=str(where), limit=None)
        each.run(group, load, key=generic.item_key, desc=f"{desc}/{audio_type}", input_warnings=input_warnings)
    for audio_type, group in groups.items():
        if audio_type == generic.UNTYPED:
            typer.echo(f"{len(group)} row(s) without a usable type: failure rows in {out / audio_type}", err=True)
        else:  # what a training config names (docs/training.md)
            typer.echo(f"data.streams.{audio_type}={out / audio_type}")
