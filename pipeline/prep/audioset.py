"""AudioSet: labelled 10 s YouTube segments, read for sound shards (the command is
``pipeline.prep.commands.audioset``).

Segment CSVs as Google publishes them: three ``#`` header lines, then
``YTID, start_seconds, end_seconds, "mid1,mid2"``. Media comes either from a directory of
files already on disk (``--media-dir``) or from YouTube through yt-dlp, which fetches only the
segment's time range.

Audio is exactly ``[start, end)`` of the source video; the image is the video frame at the
middle of the segment (or an image file sharing the media file's name, for audio-only mirrors).
"""

from __future__ import annotations

import collections
import csv
import functools
import io
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline import atomic, audio, ffmpeg, image
from pipeline import format as fmt
from pipeline.prep import ratelimit
from pipeline.prep.media import Media, SkipItem, registered_key, registered_loader

SOURCE = "audioset"
AUDIO_EXTS = ("flac", "wav", "ogg", "opus", "mp3", "m4a", "aac")
VIDEO_EXTS = ("mp4", "mkv", "webm", "mov", "avi", "m4v", "flv", "3gp", "ts")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# A file is a cut clip when its name ends in _<start>_<end>, in integer or decimal seconds
# (30, 30.0, 30.000) or integer milliseconds (30000).
_CLIP_NAME = re.compile(r"^(?P<id>.+?)_(?P<start>\d+(?:\.\d+)?)_(?P<end>\d+(?:\.\d+)?)$")
_YTID = re.compile(r"^[A-Za-z0-9_-]+$")
_TOLERANCE_S = 0.0015  # names round times to milliseconds
BOM = "\ufeff"


class CsvError(ValueError):
    """A CSV file as a whole is unusable."""


# ---------------------------------------------------------------------------------------------
# CSVs


def read_text_lines(path: str | os.PathLike, what: str) -> list[str]:
    """A CSV's lines, each without a leading UTF-8 BOM (files saved by spreadsheet tools start
    with one; concatenated files carry one mid-file). CsvError naming the file when it is missing
    or not UTF-8."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except FileNotFoundError as exc:
        raise CsvError(f"{path} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise CsvError(
            f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            f"re-save the {what} as UTF-8, e.g. iconv -f latin1 -t utf-8"
        ) from exc
    return [line.lstrip(BOM) for line in text.splitlines()]


def read_labels(path: str | os.PathLike) -> dict[str, str]:
    """``class_labels_indices.csv`` (index,mid,display_name) -> {mid: display_name}."""
    rows = list(csv.DictReader(read_text_lines(path, "labels CSV")))
    if not rows or not {"mid", "display_name"} <= set(rows[0]):
        raise CsvError(f"{path} needs a header with 'mid' and 'display_name' (class_labels_indices.csv)")
    return {r["mid"].strip(): (r["display_name"] or "").strip() for r in rows if r.get("mid")}


def read_segments(path: str | os.PathLike, labels: dict[str, str]) -> list[dict]:
    """One item per data line of a segment CSV, malformed lines included (as error items)."""
    items = []
    for number, line in enumerate(read_text_lines(path, "segments CSV"), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        items.append(_segment(number, line, labels))
    return items


def unknown_mids(items: Iterable[dict]) -> dict[str, int]:
    """MIDs the labels CSV does not name -> number of segments that carry them, most frequent first."""
    counts = collections.Counter(
        label["mid"] for item in items if "error" not in item for label in item["labels"] if label["name"] is None
    )
    return dict(counts.most_common())


def _segment(number: int, line: str, labels: dict[str, str]) -> dict:
    def bad(why: str) -> dict:
        return {"line": number, "error": f"bad_row: line {number}: {why}", "raw": line[:300]}

    try:
        fields = next(csv.reader(io.StringIO(line), skipinitialspace=True))
    except csv.Error as exc:
        return bad(str(exc))
    if len(fields) < 4:
        return bad(f"expected YTID, start, end, labels; got {len(fields)} fields")
    ytid = fields[0].strip()
    if not _YTID.match(ytid):
        return bad(f"YTID {ytid!r} has characters outside [A-Za-z0-9_-]")
    try:
        start, end = float(fields[1]), float(fields[2])
    except ValueError:
        return bad(f"start/end {fields[1]!r}, {fields[2]!r} are not numbers")
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        return bad(f"need 0 <= start < end, got {start}, {end}")
    # Labels are one quoted field; an unquoted list spills over into extra fields.
    mids = [m.strip() for m in ",".join(fields[3:]).split(",") if m.strip()]
    if not mids:
        return bad("no labels")
    return {
        "line": number,
        "ytid": ytid,
        "start": start,
        "end": end,
        "labels": [{"mid": m, "name": labels.get(m)} for m in mids],
    }


@registered_key("audioset")
def item_key(item: dict) -> str:
    """``as_<YTID>_<start in ms>``: a YTID can hold several segments, never two with one start."""
    if "error" in item:
        return f"as_line{item['line']}"
    return fmt.make_key("as", item["ytid"], fmt.time_tag(item["start"]))


# ---------------------------------------------------------------------------------------------
# media on disk


@dataclass(frozen=True)
class MediaFile:
    path: str
    start: float | None = None  # where the file begins in the source video; None = whole video
    end: float | None = None
    image: str | None = None  # an image file with the same name (audio-only mirrors)

    @property
    def has_picture(self) -> bool:
        return self.image is not None or self.path.rsplit(".", 1)[-1].lower() in VIDEO_EXTS


def _clip_spans(start: str, end: str) -> list[tuple[float, float]]:
    spans = [(float(start), float(end))]
    if "." not in start and "." not in end:  # integers may be milliseconds
        spans.append((int(start) / 1000, int(end) / 1000))
    return spans


def _ids(name: str) -> list[str]:
    # Some mirrors prefix the YTID with "Y" (Y--PJHxphWEs.wav).
    return [name, name[1:]] if name.startswith("Y") and len(name) == 12 else [name]


def scan_media(media_dir: str | os.PathLike) -> dict[str, list[MediaFile]]:
    """Every audio/video file under ``media_dir`` (recursively), by the YTID(s) its name gives."""
    index: dict[str, list[MediaFile]] = {}
    for folder, _, files in os.walk(media_dir):
        pictures = {}
        for name in files:
            stem, _, ext = name.rpartition(".")
            if ext.lower() in IMAGE_EXTS:
                pictures[stem] = os.path.join(folder, name)
        for name in sorted(files):
            stem, _, ext = name.rpartition(".")
            if not stem or ext.lower() not in AUDIO_EXTS + VIDEO_EXTS:
                continue
            path, picture = os.path.join(folder, name), pictures.get(stem)
            for ytid in _ids(stem):
                index.setdefault(ytid, []).append(MediaFile(path, image=picture))
            match = _CLIP_NAME.match(stem)
            if match:
                for start, end in _clip_spans(match["start"], match["end"]):
                    for ytid in _ids(match["id"]):
                        index.setdefault(ytid, []).append(MediaFile(path, start, end, picture))
    return index


@functools.lru_cache(maxsize=4)
def media_index(media_dir: str) -> dict[str, list[MediaFile]]:
    """``scan_media`` once per process. The command scans before the pool starts, so forked
    workers inherit the index instead of each walking a directory of millions of files."""
    return scan_media(media_dir)


def find_media(index: dict[str, list[MediaFile]], item: dict, media_dir: str) -> MediaFile:
    """The file holding ``[start, end)`` of the item's video: the tightest cut clip covering
    it, else a whole video. SkipItem naming what was looked for otherwise."""
    candidates = index.get(item["ytid"], [])
    start, end = item["start"], item["end"]
    clips = [
        m for m in candidates if m.start is not None and m.start <= start + _TOLERANCE_S and m.end >= end - _TOLERANCE_S
    ]
    wholes = [m for m in candidates if m.start is None]
    for group in (clips, wholes):
        if group:
            # picture-bearing files first, then the shortest clip
            return min(group, key=lambda m: (not m.has_picture, (m.end or 0) - (m.start or 0), m.path))
    if candidates:
        spans = sorted({(m.start, m.end) for m in candidates if m.start is not None})
        raise SkipItem(
            f"media_mismatch: {item['ytid']} has clips covering {spans} under {media_dir}, none covers [{start}, {end})"
        )
    raise SkipItem(f"missing_media: no {item['ytid']}.* or {item['ytid']}_<start>_<end>.* under {media_dir}")


def load_media_file(item: dict, media: MediaFile) -> Media:
    """Cut ``[start, end)`` of the item's source out of ``media`` and take the middle frame."""
    offset = media.start or 0.0
    start, end = item["start"] - offset, item["end"] - offset
    decoded = audio.read_clip(media.path, start=max(start, 0.0), end=end)
    middle = (start + end) / 2
    if media.image:
        picture = image.open_image(media.image)
    else:
        try:
            picture = ffmpeg.extract_frame(media.path, middle)
        except ffmpeg.FFmpegError as exc:
            raise SkipItem(f"no_frame: {media.path} at {middle:.3f} s: {exc}") from exc
    meta = {
        "source": SOURCE,
        "source_id": item["ytid"],
        "audio_type": "sound",
        "clip_start": item["start"],
        "clip_end": item["end"],
        "labels": item["labels"],
        "media_file": os.path.basename(media.path),
        "frame_time": round(item["start"] + (end - start) / 2, 6),
        "orig_duration": round(decoded.seconds, 6),
    }
    return Media(decoded.samples, decoded.sample_rate, picture, meta)


@registered_loader("audioset")
def load_from_dir(item: dict, *, media_dir: str) -> Media:
    if "error" in item:
        raise SkipItem(item["error"])
    return load_media_file(item, find_media(media_index(media_dir), item, media_dir))


def count_found(index: dict[str, list[MediaFile]], items: Iterable[dict], media_dir: str) -> int:
    found = 0
    for item in items:
        if "error" not in item:
            try:
                find_media(index, item, media_dir)
                found += 1
            except SkipItem:
                pass
    return found


# ---------------------------------------------------------------------------------------------
# downloading with yt-dlp


@dataclass
class DownloadOptions:
    url_template: str = "https://www.youtube.com/watch?v={ytid}"
    cookies: str | None = None  # Netscape cookies.txt: needed once YouTube asks "not a bot"
    rate_limit: str | None = None  # yt-dlp --limit-rate per download, e.g. "2M"
    sleep: float = 0.0  # seconds each worker waits before every download
    retries: int = 3  # extra attempts after rate limiting or network errors
    retry_wait: float = 30.0  # first back-off in seconds; doubles each attempt
    format: str = "bv*[height<=?480]+ba/b[height<=?480]/bv*+ba/b"  # a frame needs no more than 480p
    timeout: float = 300.0


# First match wins: "Sign in to confirm you're not a bot" is a bot check, not a login wall.
_FAILURE_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("format_unavailable", ("requested format is not available",)),
    ("rate_limited", ("http error 429", "too many requests", "not a bot", "rate-limit", "rate limit")),
    ("login_required", ("confirm your age", "age-restricted", "members-only", "join this channel", "login required")),
    (
        "unavailable",
        (
            "video unavailable",
            "private video",
            "is private",
            "has been removed",
            "terminated",
            "not available",
            "no longer available",
            "http error 404",
            "http error 410",
            "does not exist",
            "copyright",
        ),
    ),
    ("ffmpeg_error", ("ffmpeg exited", "conversion failed", "ffmpeg is not installed", "postprocessing")),
    (
        "network_error",
        (
            "timed out",
            "connection refused",
            "connection reset",
            "name resolution",
            "name or service not known",
            "network is unreachable",
            "transporterror",
            "incompleteread",
        ),
    ),
)
_RETRYABLE = {"rate_limited", "network_error", "download_timeout"}


def classify_download_failure(text: str) -> str:
    low = text.lower()
    for kind, needles in _FAILURE_PATTERNS:
        if any(n in low for n in needles):
            return kind
    return "download_error"


def _error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1][:300]


def clip_name(ytid: str, start: float, end: float) -> str:
    """Cache file stem; the ``_<start>_<end>`` suffix makes it a cut clip for ``scan_media`` too."""
    return f"{ytid}_{start:.3f}_{end:.3f}"


def cached_clip(cache_dir: str | os.PathLike, ytid: str, start: float, end: float) -> Path | None:
    stem = Path(cache_dir) / clip_name(ytid, start, end)
    for ext in VIDEO_EXTS + AUDIO_EXTS:
        path = stem.with_name(f"{stem.name}.{ext}")
        if path.is_file() and path.stat().st_size > 0:
            return path
    return None


def yt_dlp_command(url: str, start: float, end: float, output: str, options: DownloadOptions) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "yt_dlp",
        "--ignore-config",
        "--no-playlist",
        "--no-progress",
        "--ffmpeg-location",
        ffmpeg.ffmpeg_exe(),
        # Only the segment is fetched; re-encoding at the cuts makes it start exactly at `start`
        # (a stream copy would start at the previous keyframe, seconds early).
        "--download-sections",
        f"*{start:.3f}-{end:.3f}",
        "--force-keyframes-at-cuts",
        "-f",
        options.format,
        "-o",
        output,
        "--socket-timeout",
        "30",
    ]
    if options.cookies:
        cmd += ["--cookies", options.cookies]
    if options.rate_limit:
        cmd += ["--limit-rate", options.rate_limit]
    if options.sleep > 0:
        cmd += ["--sleep-interval", str(options.sleep)]
    return cmd + ["--", url]  # "--": YTIDs may start with "-"


def download_clip(ytid: str, start: float, end: float, cache_dir: str | os.PathLike, options: DownloadOptions) -> Path:
    """Fetch ``[start, end)`` of one video into ``cache_dir``; SkipItem with a failure kind
    (unavailable, rate_limited, login_required, ffmpeg_error, network_error, download_timeout,
    empty_output, download_error) when it cannot."""
    cache = Path(cache_dir)
    tmp = cache / f".tmp-{clip_name(ytid, start, end)}-{os.getpid()}"
    url = options.url_template.format(ytid=ytid, start=start, end=end)
    kind, detail = "download_error", ""
    try:
        for attempt in range(options.retries + 1):
            if attempt:
                time.sleep(options.retry_wait * 2 ** (attempt - 1))
            ratelimit.acquire()  # the cluster-wide pace of a Ray build (a no-op otherwise)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                proc = subprocess.run(
                    yt_dlp_command(url, start, end, str(tmp / "clip.%(ext)s"), options),
                    capture_output=True,
                    timeout=options.timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                kind, detail = "download_timeout", f"yt-dlp ran over {options.timeout:.0f} s"
                continue
            if proc.returncode != 0:
                text = proc.stderr.decode("utf-8", "replace") + proc.stdout.decode("utf-8", "replace")
                kind, detail = classify_download_failure(text), _error_line(text)
                if kind == "rate_limited":  # every node pauses, not only this one
                    ratelimit.back_off(options.retry_wait * 2**attempt)
                if kind in _RETRYABLE:
                    continue
                break
            outputs = [p for p in tmp.iterdir() if p.is_file() and not p.name.endswith((".part", ".ytdl"))]
            if not outputs or outputs[0].stat().st_size == 0:
                kind, detail = "empty_output", "yt-dlp succeeded but wrote no media file"
                break
            final = cache / f"{clip_name(ytid, start, end)}{outputs[0].suffix}"
            atomic.replace(outputs[0], final)  # fsynced: a crash never leaves a torn clip in the cache
            return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    raise SkipItem(f"{kind}: {ytid} [{start}, {end}) from {url}: {detail}")


@registered_loader("audioset-download")
def load_downloaded(item: dict, *, cache_dir: str, options: dict) -> Media:
    if "error" in item:
        raise SkipItem(item["error"])
    ytid, start, end = item["ytid"], item["start"], item["end"]
    path = cached_clip(cache_dir, ytid, start, end) or download_clip(
        ytid, start, end, cache_dir, DownloadOptions(**options)
    )
    try:
        return load_media_file(item, MediaFile(str(path), start, end))
    except ffmpeg.FFmpegError as exc:  # a damaged download is an ffmpeg failure too
        raise SkipItem(f"ffmpeg_error: {path}: {exc}") from exc
