"""`prep shards places`: PlacesAudio spoken captions + Places205 images -> speech shards, read by
``pipeline.prep.places``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli_support import fail, with_options
from pipeline.prep import places
from pipeline.prep.commands.options import BuildOptions


def resolve_roots(metadata: Path, header: dict, audio_root: Path | None, image_root: Path | None) -> tuple[Path, Path]:
    """Roots from the options, else from the metadata's base paths when they exist here, else
    (audio only) the distribution layout ``<root>/metadata/<split>.json``."""
    if audio_root is None:
        base = header.get("audio_base_path")
        audio_root = Path(base) if isinstance(base, str) and Path(base).is_dir() else metadata.resolve().parent.parent
    if image_root is None:
        base = header.get("image_base_path")
        if not (isinstance(base, str) and Path(base).is_dir()):
            fail(
                f"the metadata's image_base_path {base!r} does not exist here; pass --image-root "
                "(the Places205 image folder the 'image' paths are relative to)"
            )
        image_root = Path(base)
    for name, root in (("--audio-root", audio_root), ("--image-root", image_root)):
        if not root.is_dir():
            fail(f"{name} {root} is not a directory")
    return audio_root, image_root


@with_options
def command(
    metadata: Annotated[
        Path, typer.Option("--metadata", "-m", help="PlacesAudio metadata JSON (train.json / val.json).")
    ],
    audio_root: Annotated[
        Path | None,
        typer.Option(
            help="Folder the 'wav' paths are relative to. "
            "Default: the metadata's audio_base_path, else the folder holding metadata/."
        ),
    ] = None,
    image_root: Annotated[
        Path | None,
        typer.Option(
            help="Places205 folder the 'image' paths are relative to. Default: the metadata's image_base_path."
        ),
    ] = None,
    *,
    opts: BuildOptions,
) -> None:
    """PlacesAudio spoken captions + Places205 images -> speech shards."""
    try:
        items, header = places.read_metadata(metadata)
    except places.MetadataError as exc:
        fail(str(exc))
    audio_root, image_root = resolve_roots(metadata, header, audio_root, image_root)
    load = functools.partial(
        places.load_item, audio_root=str(audio_root.resolve()), image_root=str(image_root.resolve())
    )
    opts.run(items, load, key=places.item_key, desc="places")
