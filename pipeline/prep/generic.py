"""Your own data: a manifest of rows (CSV, JSONL or parquet) or a folder of videos, read for shards
of any audio type (the commands are ``pipeline.prep.commands.generic``).

A manifest row names an audio file (or a video, whose own sound track is used), the picture (an
image file, or a video whose frame at ``frame_time`` is taken; default: the audio file itself, which
must then be a video), an optional ``[start, end)`` in seconds, the audio ``type`` (``speech``,
``sound``, ``music``, any name ``[a-z][a-z0-9_]*``), and optionally a ``caption``, a ``class`` and an
``id``; other columns are kept in the sample json under ``extra``. Paths are relative to one root
folder and may not leave it (``media.resolve_under``). Every row becomes one input item, malformed
ones included: they turn into counted failure rows naming the row (``line N`` of a CSV or JSONL
file, ``row N`` of a parquet file, counted from 0).

A folder of videos is a manifest made by listing (``list_videos``): each video is one clip, or,
when longer than a clip, consecutive 10 s segments (see ``video_segments``).

The command builds one shard directory per type; ``group_by_type`` splits the items, rows without a
usable type going to ``UNTYPED`` (failure rows only).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import hashlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import audio, ffmpeg, image
from pipeline import format as fmt
from pipeline.prep.media import Media, SkipItem, registered_key, registered_loader, resolve_under

SOURCE_MANIFEST, SOURCE_VIDEOS = "manifest", "videos"
# The directory of the rows whose type is missing or unusable: not a type name (it starts with
# "_"), so it never meets a real type's directory.
UNTYPED = "_untyped"
# A type names a directory and a training stream: kept short enough for any file system.
TYPE_MAX_CHARS = 40
# Columns the reader interprets; every other column is kept under "extra".
COLUMNS = ("audio", "image", "start", "end", "frame_time", "type", "caption", "class", "id")
# Opened as pictures by PIL; any other picture file is read as a video (its frame at frame_time).
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".3gp", ".ts", ".mpg", ".mpeg", ".wmv", ".ogv")
# A video up to this much longer than a clip is one clip (VGGSound's 10 s clips come out of their
# encoders at 10.0-10.1 s); a longer one is cut into clip-long segments.
WHOLE_CLIP_SLACK_S = 0.5
# What is left after a longer video's last whole segment becomes a segment of its own from half a
# clip up (zero-padded like any short clip); a shorter remainder is left out and counted.
MIN_REMAINDER_S = fmt.CLIP_SECONDS / 2


class ManifestError(ValueError):
    """The manifest (or video folder) as a whole is unusable; the message names it and what to do."""


class _BadRow(Exception):
    """One row is unusable: its item becomes a failure row with this reason (of ``kind``)."""

    def __init__(self, message: str, kind: str = "bad_row"):
        super().__init__(message)
        self.kind = kind


def is_type_name(name: Any) -> bool:
    return isinstance(name, str) and len(name) <= TYPE_MAX_CHARS and fmt.AUDIO_TYPE_RE.fullmatch(name) is not None


def check_type(name: Any, what: str) -> str:
    """``name`` if it can name an audio type (and its directory), else a ValueError saying why."""
    if not is_type_name(name):
        raise ValueError(
            f"{what} {name!r} is not a type name: lower-case letters, digits and _, starting with a letter, "
            f"at most {TYPE_MAX_CHARS} characters (speech, sound, music, ...)"
        )
    return name


# ---------------------------------------------------------------------------------------------
# manifests


def read_manifest(path: str | os.PathLike, *, default_type: str | None = None) -> list[dict]:
    """One item per data row of a ``.csv``, ``.jsonl`` or ``.parquet`` manifest, in order, malformed
    rows included (as error items). ``default_type`` is the type of rows that give none.
    ManifestError when the file as a whole cannot be read."""
    path = Path(path)
    suffix = path.suffix.lower()
    readers = {".csv": _csv_rows, ".jsonl": _jsonl_rows, ".ndjson": _jsonl_rows, ".parquet": _parquet_rows}
    if suffix not in readers:
        raise ManifestError(f"{path}: a manifest is a .csv, .jsonl or .parquet file, not {suffix or 'no suffix'!r}")
    if not path.is_file():
        raise ManifestError(f"{path} does not exist")
    rows = list(readers[suffix](path, default_type))
    if not rows:
        raise ManifestError(f"{path} has no data rows")
    return [_item(index, where, raw, default_type, SOURCE_MANIFEST) for index, (where, raw) in enumerate(rows)]


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: spreadsheet tools start a saved CSV with a byte-order mark
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); re-save it as UTF-8"
        ) from exc


def _need_columns(path: Path, columns: list[str], default_type: str | None) -> None:
    if "audio" not in columns:
        raise ManifestError(f"{path} has no 'audio' column (its columns: {', '.join(map(str, columns)) or 'none'})")
    if "type" not in columns and default_type is None:
        raise ManifestError(f"{path} has no 'type' column: add one (speech, sound, music, ...) or pass --type")


def _csv_rows(path: Path, default_type: str | None) -> Iterator[tuple[str, Any]]:
    reader = csv.DictReader(_read_text(path).splitlines(keepends=True))
    try:
        header = reader.fieldnames or []
        reader.fieldnames = [name.strip() for name in header]
        _need_columns(path, reader.fieldnames, default_type)
        for row in reader:
            if not any((v or "").strip() for k, v in row.items() if k is not None):
                continue  # a blank line
            yield f"line {reader.line_num}", row
    except csv.Error as exc:
        raise ManifestError(f"{path} line {reader.line_num}: not readable as CSV ({exc})") from exc


def _jsonl_rows(path: Path, default_type: str | None) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"line {number}", _BadRow(f"not a JSON object ({exc.msg} at column {exc.colno})")


def _parquet_rows(path: Path, default_type: str | None) -> Iterator[tuple[str, Any]]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"{path} is not a readable parquet file ({exc})") from exc
    _need_columns(path, table.column_names, default_type)
    for index, row in enumerate(table.to_pylist()):
        yield f"row {index}", row


def _item(index: int, where: str, raw: Any, default_type: str | None, source: str) -> dict:
    """An input item from one row; an error item (``error``: the reason) when the row is unusable.
    The type is kept whenever it is usable, so that the failure is counted in its directory."""
    item: dict[str, Any] = {"row": index, "where": where, "source": source, "type": None}
    try:
        if isinstance(raw, _BadRow):
            raise raw
        if not isinstance(raw, dict):
            raise _BadRow(f"is {type(raw).__name__}, not an object with named fields")
        if None in raw:  # csv.DictReader's place for fields beyond the header
            raise _BadRow(f"has {len(raw[None])} more field(s) than the header")
        try:
            json.dumps(raw, ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError as exc:
            # JSON spells a file name that is not UTF-8 as a lone surrogate (\udcff): it can be neither
            # opened portably nor written to the manifest of the shards
            raise _BadRow(f"holds {ascii(exc.object[exc.start : exc.end])}, which is not valid UTF-8") from None
        given = _text(raw.get("type"), "type")
        item["type"] = given if given is not None else default_type
        if item["type"] is None:
            raise _BadRow("gives no type; add a 'type' value (speech, sound, music, ...) or pass --type", "bad_type")
        if not is_type_name(item["type"]):
            bad, item["type"] = item["type"], None
            raise _BadRow(
                f"type {bad!r} is not a type name (lower-case letters, digits and _, starting with a letter, "
                f"at most {TYPE_MAX_CHARS} characters)",
                kind="bad_type",
            )
        for name in ("audio", "image"):
            value = raw.get(name)
            if value is not None and not isinstance(value, str):
                raise _BadRow(f"{name} {value!r} is not a path")
            item[name] = value.strip() if isinstance(value, str) and value.strip() else None
        if item["audio"] is None:
            raise _BadRow("has no 'audio' path")
        for name in ("start", "end", "frame_time"):
            item[name] = _seconds(raw.get(name), name)
        if item["end"] is not None and item["end"] <= (item["start"] or 0.0):
            raise _BadRow(f"needs start < end, got start {item['start'] or 0.0}, end {item['end']}")
        for name in ("caption", "class", "id"):
            item[name] = _text(raw.get(name), name)
        item["extra"] = {str(k): _plain(v) for k, v in raw.items() if k not in COLUMNS and v not in (None, "")}
    except _BadRow as exc:
        return {**item, "error": f"{exc.kind}: {where}: {exc.args[0]}", "raw": ascii(raw)[:300]}
    return item


def _text(value: Any, name: str) -> str | None:
    """A text field: None when absent or empty; numbers (a class given as 3) as their text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _BadRow(f"{name} {value!r} is not text")
    text = str(value).strip()
    return text or None


def _seconds(value: Any, name: str) -> float | None:
    """A time in seconds: None when absent, empty or NaN (how pandas writes a missing number)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        seconds = float(value)
    except (TypeError, ValueError):
        raise _BadRow(f"{name} {value!r} is not a number of seconds") from None
    if math.isnan(seconds):
        return None
    if not math.isfinite(seconds) or seconds < 0:
        raise _BadRow(f"{name} {value!r} must be a finite number of seconds >= 0")
    return seconds


def _plain(value: Any) -> Any:
    """A value as JSON holds it (a parquet timestamp or decimal as its text)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


# ---------------------------------------------------------------------------------------------
# a folder of videos


def video_segments(duration: float | None) -> tuple[list[tuple[float | None, float | None]], float]:
    """The ``(start, end)`` ranges a video of ``duration`` seconds gives, and the seconds left out.

    Up to a clip (10 s, plus ``WHOLE_CLIP_SLACK_S``), or of unknown duration: the whole video,
    ``(None, None)``. Longer: consecutive 10 s segments from 0, then what remains as a last segment
    ``(start, None)`` (to the end) when it is at least ``MIN_REMAINDER_S`` long, else left out.
    """
    clip = fmt.CLIP_SECONDS
    if duration is None or duration <= clip + WHOLE_CLIP_SLACK_S:
        return [(None, None)], 0.0
    whole = int(duration // clip)
    spans: list[tuple[float | None, float | None]] = [(k * clip, (k + 1) * clip) for k in range(whole)]
    remainder = duration - whole * clip
    if remainder >= MIN_REMAINDER_S:
        return [*spans, (whole * clip, None)], 0.0
    return spans, remainder


def list_videos(
    folder: str | os.PathLike, *, audio_type: str, class_from_folder: bool = False, threads: int = 8
) -> tuple[list[dict], dict]:
    """The items of every video file under ``folder`` (recursively, in path order) and what the
    listing noticed: files that are not videos, remainders left out, videos of unknown duration.
    Durations are read from the files' headers (``ffmpeg.probe``), ``threads`` at a time."""
    root = Path(folder)
    videos, others = [], 0
    for parent, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(parent, name)
            if path.suffix.lower() in VIDEO_EXTS:
                videos.append(path.relative_to(root).as_posix())
            else:
                others += 1
    if not videos:
        raise ManifestError(f"{root} holds no video files ({', '.join(VIDEO_EXTS)})")
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        durations = list(pool.map(lambda rel: ffmpeg.probe(root / rel).duration, videos))
    items: list[dict] = []
    left_out, left_out_seconds = 0, 0.0
    for rel, duration in zip(videos, durations):
        spans, remainder = video_segments(duration)
        if remainder > 0:
            left_out, left_out_seconds = left_out + 1, left_out_seconds + remainder
        for start, end in spans:
            span = "" if start is None else f" [{start:g}, {'end' if end is None else f'{end:g}'})"
            row = {"audio": rel, "type": audio_type, "start": start, "end": end}
            parent = PurePosixPath(rel).parent
            if class_from_folder and parent.parts:
                row["class"] = parent.parts[0]
            items.append(_item(len(items), f"video {rel}{span}", row, None, SOURCE_VIDEOS))
    warnings: dict[str, Any] = {}
    if others:
        warnings["files_not_videos"] = others
    if left_out:
        warnings["remainders_left_out"] = {"videos": left_out, "seconds": round(left_out_seconds, 3)}
    unknown = sum(d is None for d in durations)
    if unknown:
        warnings["duration_unknown"] = unknown  # read whole (their first 10 s); unreadable ones fail
    return items, warnings


def group_by_type(items: list[dict]) -> dict[str, list[dict]]:
    """Items by type, types in order of first appearance, ``UNTYPED`` (rows without a usable type)
    last; each group's items keep their input order. Keys that would clash inside a group are
    marked (``shared_key``) so that ``item_key`` tells them apart."""
    groups: dict[str, list[dict]] = {}
    for item in items:
        groups.setdefault(item["type"] or UNTYPED, []).append(item)
    if UNTYPED in groups:
        groups[UNTYPED] = groups.pop(UNTYPED)
    for group in groups.values():
        _mark_shared_keys(group)
    return groups


# ---------------------------------------------------------------------------------------------
# keys


def _identity(item: dict) -> str:
    """What makes a row's sample: its own id, else its audio file (normalized) and range."""
    if item.get("id") is not None:
        return json.dumps(["id", item["id"]])
    return json.dumps([os.path.normpath(item["audio"]), item.get("start"), item.get("end")])


def _plain_key(item: dict) -> str:
    if item.get("id") is not None:
        return fmt.make_key(item["type"], item["id"])
    parts = PurePosixPath(os.path.normpath(item["audio"])).with_suffix("").parts
    times = [fmt.time_tag(item[t]) for t in ("start", "end") if item.get(t) is not None]
    return fmt.make_key(item["type"], *parts, *times)


def _mark_shared_keys(items: list[dict]) -> None:
    """Flag the items whose plain key another identity spells too (``a_b.wav`` and ``a/b.wav``, an
    id ``clips_a`` and ``clips/a.wav``): their keys get the identity's hash. The same identity
    twice (one file and range on two rows) keeps one key: the second row fails as duplicate_key."""
    identities: dict[str, set] = {}
    for item in items:
        if "error" not in item:
            identities.setdefault(_plain_key(item), set()).add(_identity(item))
    for item in items:
        if "error" not in item and len(identities[_plain_key(item)]) > 1:
            item["shared_key"] = True


@registered_key("manifest")
def item_key(item: dict) -> str:
    """``<type>_<id>``, else ``<type>_<audio path without extension, '/' -> '_'>[_<start ms>][_<end
    ms>]``, characters outside ``[A-Za-z0-9_-]`` replaced (with a hash of the raw parts, so nothing a
    path holds survives into a key), plus ``-<hash of the identity>`` where two identities spell one
    key. A failed row is ``<type>-row<N>`` (``row<N>`` without a type): a ``-`` after the type, which
    no good row's key has there."""
    if "error" in item:
        return f"{item['type']}-row{item['row']}" if item.get("type") else f"row{item['row']}"
    key = _plain_key(item)
    if item.get("shared_key"):
        key += "-" + hashlib.sha1(_identity(item).encode()).hexdigest()[:8]
    return key


# ---------------------------------------------------------------------------------------------
# media


@contextlib.contextmanager
def _naming(where: str) -> Iterator[None]:
    """Bad input while loading a row -> SkipItem whose reason names the row after its kind."""
    try:
        yield
    except (SkipItem, audio.BadAudio, image.BadImage) as exc:
        kind, sep, detail = str(exc).partition(": ")
        raise SkipItem(f"{kind}: {where}: {detail}" if sep else f"{where}: {exc}") from exc


@registered_loader("manifest")
def load_item(item: dict, *, root: str) -> Media:
    """Read one row's audio range and picture (paths must stay inside ``root``)."""
    if "error" in item:
        raise SkipItem(item["error"])
    with _naming(item["where"]):
        return _load(item, root)


def _load(item: dict, root: str) -> Media:
    sound = resolve_under(root, item["audio"], "audio")
    picture_rel = item["image"] or item["audio"]
    picture_path = resolve_under(root, picture_rel, "image")
    if not sound.is_file():
        raise SkipItem(f"missing_audio: {sound} does not exist")
    if not picture_path.is_file():
        raise SkipItem(f"missing_image: {picture_path} does not exist")
    start = item["start"] or 0.0
    decoded = audio.read_clip(sound, start=start, end=item["end"])
    meta: dict[str, Any] = {
        "source": item["source"],
        "source_id": item["audio"],
        "audio_type": item["type"],
        "clip_start": start,
        "image_source": picture_rel,
        "orig_duration": round(decoded.seconds, 6),
    }
    if item["end"] is not None:
        meta["clip_end"] = item["end"]
    if picture_path.suffix.lower() in IMAGE_EXTS:
        picture = image.open_image(picture_path)
    else:
        # default: the middle of the audio the clip keeps (its first 10 s)
        at = item["frame_time"]
        if at is None:
            at = start + min(decoded.seconds, fmt.CLIP_SECONDS) / 2
        try:
            picture = ffmpeg.extract_frame(picture_path, at)
        except ffmpeg.FFmpegError as exc:
            raise SkipItem(f"no_frame: {picture_path} at {at:.3f} s: {exc}") from exc
        meta["frame_time"] = round(at, 6)
    if item["caption"] is not None:
        meta["caption"] = item["caption"]
    if item["class"] is not None:
        meta["class"] = item["class"]
        meta["labels"] = [{"mid": None, "name": item["class"]}]
    if item["id"] is not None:
        meta["id"] = item["id"]
    if item["extra"]:
        meta["extra"] = item["extra"]
    return Media(decoded.samples, decoded.sample_rate, picture, meta)
