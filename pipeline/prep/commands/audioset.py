"""`prep shards audioset`: AudioSet segments -> sound shards, from local media or downloaded with
yt-dlp, read by ``pipeline.prep.audioset``."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from pipeline import storage
from pipeline.cli_support import fail, with_options
from pipeline.prep.audioset import (
    CsvError,
    DownloadOptions,
    count_found,
    item_key,
    load_downloaded,
    load_from_dir,
    media_index,
    read_labels,
    read_segments,
    unknown_mids,
)
from pipeline.prep.commands.common import Engine
from pipeline.prep.commands.options import BuildOptions


@with_options
def command(
    segments: Annotated[Path, typer.Option("--segments", "-s", help="Segment CSV (balanced_train_segments.csv, ...).")],
    labels: Annotated[Path, typer.Option("--labels", "-l", help="class_labels_indices.csv (mid -> display name).")],
    media_dir: Annotated[
        Path | None,
        typer.Option(
            help="Files already on disk, named YTID.* (whole videos) or YTID_<start>_<end>.* (cut clips). "
            "Without it, clips are downloaded with yt-dlp."
        ),
    ] = None,
    download_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where downloaded clips are kept (a cache for reruns). Default: <out>/media; for an "
            "s3:// --out, prep-media/ in the local temporary directory."
        ),
    ] = None,
    url_template: Annotated[
        str, typer.Option(help="Video URL; {ytid}, {start}, {end} are filled in.")
    ] = DownloadOptions.url_template,
    cookies: Annotated[
        Path | None, typer.Option(help="cookies.txt for YouTube's bot and age checks.", exists=True, dir_okay=False)
    ] = None,
    rate_limit: Annotated[str | None, typer.Option(help="Bandwidth cap per download, e.g. 2M.")] = None,
    sleep: Annotated[float, typer.Option(help="Seconds each worker waits before every download.")] = 0.0,
    retries: Annotated[int, typer.Option(help="Extra attempts after rate limiting or network errors.")] = 3,
    retry_wait: Annotated[float, typer.Option(help="First back-off in seconds; doubles per attempt.")] = 30.0,
    yt_format: Annotated[str, typer.Option("--format", help="yt-dlp format selector.")] = DownloadOptions.format,
    downloads_per_second: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="With --engine ray: downloads started per second over the whole cluster (a rate-limit "
            "answer pauses them all).",
        ),
    ] = None,
    *,
    opts: BuildOptions,
) -> None:
    """AudioSet segments -> sound shards, from local media or downloaded with yt-dlp.

    With downloads, --workers (or with --engine ray, the shard tasks each node runs: its CPUs
    divided by --ray-task-cpus) is also the number of concurrent downloads.
    """
    if downloads_per_second is not None and opts.engine != Engine.ray:
        fail("--downloads-per-second paces a Ray build (--engine ray); with the local engine use --sleep")
    items, unknown = read_items(segments, labels, opts.limit)
    if media_dir is not None:
        load = local_loader(media_dir, items)
    else:
        options = DownloadOptions(
            url_template=url_template,
            cookies=str(cookies.resolve()) if cookies else None,
            rate_limit=rate_limit,
            sleep=sleep,
            retries=retries,
            retry_wait=retry_wait,
            format=yt_format,
        )
        load = download_loader(download_dir or default_download_dir(opts.out), options)
    opts.run(
        items,
        load,
        key=item_key,
        desc="audioset",
        input_warnings={"unknown_mids": unknown} if unknown else None,
        ray_extra={"download_rate": downloads_per_second} if downloads_per_second else None,
    )


def read_items(segments: Path, labels: Path, limit: int | None) -> tuple[list[dict], dict[str, int]]:
    """The command's items (the first ``limit``) and the MIDs among them the labels CSV lacks,
    with one warning about those."""
    try:
        items = read_segments(segments, read_labels(labels))[:limit]
    except CsvError as exc:
        fail(str(exc))
    unknown = unknown_mids(items)
    if unknown:  # once here, not per segment: a labels CSV of another release lacks hundreds
        typer.echo(
            f"warning: {len(unknown)} MID(s) in {segments} are not in {labels} (e.g. {', '.join(list(unknown)[:3])}); "
            "their labels keep name null (counted as unknown_mids in dataset.json)",
            err=True,
        )
    return items, unknown


def local_loader(media_dir: Path, items: list[dict]) -> Callable:
    if not media_dir.is_dir():
        fail(f"--media-dir {media_dir} is not a directory")
    root = str(media_dir.resolve())
    found = count_found(media_index(root), items, root)
    typer.echo(f"media for {found} of {len(items)} segments found under {root}", err=True)
    return functools.partial(load_from_dir, media_dir=root)


def default_download_dir(out: str) -> Path:
    """``<out>/media``; for an output in a store, a folder of the local temporary directory (each
    node's own on a Ray cluster): downloads are a local cache, never uploaded."""
    try:
        loc = storage.location(out)
    except storage.StorageError as exc:
        fail(str(exc))
    if isinstance(loc, storage.S3Path):
        return Path(tempfile.gettempdir()) / "prep-media" / loc.bucket / loc.key
    return loc / "media"


def download_loader(download_dir: Path, options: DownloadOptions) -> Callable:
    if importlib.util.find_spec("yt_dlp") is None:
        fail("downloading needs yt-dlp: pip install yt-dlp (or the project's [download] extra), or pass --media-dir")
    cache = download_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    return functools.partial(load_downloaded, cache_dir=str(cache), options=dataclasses.asdict(options))
