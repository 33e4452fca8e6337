"""PlacesAudio: spoken captions of Places205 images, read for speech shards (the command is
``pipeline.prep.commands.places``).

The metadata (``PlacesAudio_400k_distro/metadata/train.json`` or ``val.json``) reads::

    {"image_base_path": "...", "audio_base_path": "...",
     "data": [{"wav": "wavs/356/utterance_250046.wav", "image": "b/bakery/shop/gsun_....jpg",
               "uttid": "...", "speaker": "...", "asr_text": "..."}, ...]}

Every ``data`` entry becomes one input item, malformed ones included (they turn into counted
failure rows). Fields besides ``wav`` and ``image`` are kept in the sample json; ``asr_text`` is
also copied to ``caption``.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from pathlib import PurePosixPath
from typing import Any

from pipeline import audio, image
from pipeline import format as fmt
from pipeline.prep.media import Media, SkipItem, registered_key, registered_loader, resolve_under

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
    _mark_shared_keys(items)
    header = {k: v for k, v in doc.items() if k != "data"}
    return items, header


def _item(row: int, entry: Any) -> dict:
    if not isinstance(entry, dict):
        return {"row": row, "error": f"bad_row: data[{row}] is {type(entry).__name__}, not an object"}
    for name, value in entry.items():
        bad = _non_utf8(name) or _non_utf8(value)
        if bad is not None:
            # JSON spells a file name that is not UTF-8 as a lone surrogate (\udcff): it can be
            # neither opened portably nor written to the manifest, so the row fails on its own.
            return {
                "row": row,
                "error": f"bad_row: data[{row}] field {ascii(name)} holds {ascii(bad)}, which is not valid UTF-8; "
                "rename the file to a UTF-8 name and fix the metadata",
                "raw": ascii(entry)[:300],
            }
    for field in ("wav", "image"):
        if not isinstance(entry.get(field), str) or not entry[field].strip():
            return {"row": row, "error": f"bad_row: data[{row}] has no {field!r} path", "entry": entry}
    extra = {k: v for k, v in entry.items() if k not in ("wav", "image")}
    return {"row": row, "wav": entry["wav"], "image": entry["image"], "extra": extra}


def _non_utf8(value: Any) -> str | None:
    """The first string inside ``value`` that cannot be encoded as UTF-8, else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value
        return None
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list):
        return next((bad for v in value if (bad := _non_utf8(v)) is not None), None)
    return None


def _plain_key(wav: str) -> str:
    return fmt.make_key(SOURCE, *PurePosixPath(wav).with_suffix("").parts)


def _mark_shared_keys(items: list[dict]) -> None:
    """Flag the items whose wav path spells the same plain key as a different wav path
    (``wavs/a_b.wav`` and ``wavs/a/b.wav``): their keys get the path's hash, every other key
    stays as it was."""
    paths = collections.defaultdict(set)
    for item in items:
        if "error" not in item:
            paths[_plain_key(item["wav"])].add(item["wav"])
    for item in items:
        if "error" not in item and len(paths[_plain_key(item["wav"])]) > 1:
            item["shared_key"] = True


@registered_key("places")
def item_key(item: dict) -> str:
    """``places_<wav path without extension, '/' -> '_'>``, plus ``-<hash of the path>`` when
    another wav path of the metadata spells the same key: distinct wav paths get distinct keys."""
    if "error" in item:
        return f"places_row{item['row']}"
    key = _plain_key(item["wav"])
    if item.get("shared_key"):
        key += "-" + hashlib.sha1(item["wav"].encode()).hexdigest()[:8]
    return key


@registered_loader("places")
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
