"""PlacesAudio: spoken captions of Places205 images -> speech shards (`prep shards places`).

The metadata (``PlacesAudio_400k_distro/metadata/train.json`` or ``val.json``) reads::

    {"image_base_path": "...", "audio_base_path": "...",
     "data": [{"wav": "wavs/356/utterance_250046.wav", "image": "b/bakery/shop/gsun_....jpg",
               "uttid": "...", "speaker": "...", "asr_text": "..."}, ...]}

Every ``data`` entry becomes one input item, malformed ones included (they turn into counted
failure rows). Fields besides ``wav`` and ``image`` are kept in the sample json; ``asr_text`` is
also copied to ``caption``.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import typer

from pipeline import audio, image
from pipeline import format as fmt
from pipeline.prep import commands
from pipeline.prep.build import DEFAULT_SHARD_SIZE
from pipeline.prep.media import Media, SkipItem, resolve_under

SOURCE = "places"
# Extra entry fields that would overwrite a field the sample json defines are stored under
# "places_<name>" instead.
_RESERVED = set(fmt.REQUIRED_FIELDS) | {"labels", "caption", "image_source", "orig_duration", "words", "class"}


class MetadataError(ValueError):
    """The metadata file as a whole is unusable (not JSON, no ``data`` list)."""


def read_metadata(path: str | os.PathLike) -> tuple[list[dict], dict]:
    """Items (one per ``data`` entry, in order) and the file's top-level fields."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError as exc:
        raise MetadataError(f"{path} does not exist") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise MetadataError(f"{path} has no top-level 'data' list; is it a PlacesAudio metadata file?")
    items = [_item(row, entry) for row, entry in enumerate(doc["data"])]
    header = {k: v for k, v in doc.items() if k != "data"}
    return items, header


def _item(row: int, entry: Any) -> dict:
    if not isinstance(entry, dict):
        return {"row": row, "error": f"bad_row: data[{row}] is {type(entry).__name__}, not an object"}
    for field in ("wav", "image"):
        if not isinstance(entry.get(field), str) or not entry[field].strip():
            return {"row": row, "error": f"bad_row: data[{row}] has no {field!r} path", "entry": entry}
    extra = {k: v for k, v in entry.items() if k not in ("wav", "image")}
    return {"row": row, "wav": entry["wav"], "image": entry["image"], "extra": extra}


def item_key(item: dict) -> str:
    """``places_<wav path without extension, '/' -> '_'>``: unique as long as the wav paths are."""
    if "error" in item:
        return f"places_row{item['row']}"
    return fmt.make_key(SOURCE, *PurePosixPath(item["wav"]).with_suffix("").parts)


def load_item(item: dict, *, audio_root: str, image_root: str) -> Media:
    """Read one item's wav and image (paths must stay inside the given roots)."""
    if "error" in item:
        raise SkipItem(item["error"])
    wav = resolve_under(audio_root, item["wav"], "wav")
    img = resolve_under(image_root, item["image"], "image")
    if not wav.is_file():
        raise SkipItem(f"missing_audio: {wav} does not exist")
    if not img.is_file():
        raise SkipItem(f"missing_image: {img} does not exist")
    decoded = audio.read_clip(wav)
    picture = image.open_image(img)
    meta: dict[str, Any] = {
        "source": SOURCE,
        "source_id": item["wav"],
        "audio_type": "speech",
        "image_source": item["image"],
        "orig_duration": round(decoded.seconds, 6),
    }
    for name, value in item["extra"].items():
        meta[f"places_{name}" if name in _RESERVED else name] = value
    if isinstance(item["extra"].get("asr_text"), str):
        meta["caption"] = item["extra"]["asr_text"]
    return Media(decoded.samples, decoded.sample_rate, picture, meta)


def resolve_roots(metadata: Path, header: dict, audio_root: Path | None, image_root: Path | None) -> tuple[Path, Path]:
    """Roots from the options, else from the metadata's base paths when they exist here, else
    (audio only) the distribution layout ``<root>/metadata/<split>.json``."""
    if audio_root is None:
        base = header.get("audio_base_path")
        audio_root = Path(base) if isinstance(base, str) and Path(base).is_dir() else metadata.resolve().parent.parent
    if image_root is None:
        base = header.get("image_base_path")
        if not (isinstance(base, str) and Path(base).is_dir()):
            raise commands.fail(
                f"the metadata's image_base_path {base!r} does not exist here; pass --image-root "
                "(the Places205 image folder the 'image' paths are relative to)"
            )
        image_root = Path(base)
    for name, root in (("--audio-root", audio_root), ("--image-root", image_root)):
        if not root.is_dir():
            raise commands.fail(f"{name} {root} is not a directory")
    return audio_root, image_root


def command(
    metadata: Annotated[Path, typer.Option("--metadata", "-m", help="PlacesAudio metadata JSON (train.json / val.json).")],
    out: commands.OutOpt,
    audio_root: Annotated[
        Path | None,
        typer.Option(help="Folder the 'wav' paths are relative to. Default: the metadata's audio_base_path, else the folder holding metadata/."),
    ] = None,
    image_root: Annotated[
        Path | None, typer.Option(help="Places205 folder the 'image' paths are relative to. Default: the metadata's image_base_path.")
    ] = None,
    workers: commands.WorkersOpt = 1,
    part: commands.PartOpt = "0/1",
    shard_size: commands.ShardSizeOpt = DEFAULT_SHARD_SIZE,
    limit: commands.LimitOpt = None,
    progress: commands.ProgressOpt = True,
) -> None:
    """PlacesAudio spoken captions + Places205 images -> speech shards."""
    try:
        items, header = read_metadata(metadata)
    except MetadataError as exc:
        raise commands.fail(str(exc)) from exc
    audio_root, image_root = resolve_roots(metadata, header, audio_root, image_root)
    load = functools.partial(load_item, audio_root=str(audio_root.resolve()), image_root=str(image_root.resolve()))
    commands.run_build(
        items, load, out, key=item_key, workers=workers, part=part, shard_size=shard_size,
        limit=limit, progress=progress, desc="places",
    )
