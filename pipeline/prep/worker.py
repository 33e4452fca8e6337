"""One input item in a worker process: load, standardize, encode, and the ``Outcome`` (a sample
or a failure reason) that becomes its manifest row. Nothing here raises for bad input."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import audio as audio_mod
from pipeline import format as fmt
from pipeline import image as image_mod
from pipeline.atomic import dumps_strict, strict_json
from pipeline.prep.media import Media, SkipItem, reason_kind

WRITTEN, FAILED = "written", "failed"
STAGES = ("decode", "resample", "image", "encode", "write")


@dataclass
class Outcome:
    index: int
    key: str
    item: Any
    status: str = FAILED
    reason: str | None = None
    sample: dict | None = None  # encoded members (__key__, flac, jpg, json)
    meta: dict | None = None
    seconds: dict = field(default_factory=dict)  # stage -> seconds spent on this item

    def row(self) -> dict:
        meta = self.meta or {}
        return {
            "index": self.index,
            "key": self.key,
            "status": self.status,
            "reason": self.reason,
            "reason_kind": reason_kind(self.reason) if self.reason else None,
            "item": dumps_strict(strict_json(self.item), default=str),
            "duration": meta.get("duration"),
            "orig_sample_rate": meta.get("orig_sample_rate"),
            "orig_channels": meta.get("orig_channels"),
            "audio_type": meta.get("audio_type"),
            "meta": dumps_strict(meta) if self.meta else None,
        }


def complete_meta(media: Media, duration: float) -> dict:
    """The loader's metadata plus the fields the writer owns when the loader left them out.
    SkipItem ``bad_duration`` when the duration the loader gave is not a positive number: the
    loader's validity mask ``[0, duration)`` would be empty."""
    given = media.meta.get("duration", duration)
    if (
        isinstance(given, bool)
        or not isinstance(given, (int, float, np.number))
        or not math.isfinite(given)
        or given <= 0
    ):
        raise SkipItem(f"bad_duration: duration {given!r} is not a positive number of seconds")
    meta = strict_json(dict(media.meta))
    samples = np.shape(media.audio)[-1]
    meta.setdefault("duration", duration)
    meta.setdefault("orig_sample_rate", int(media.sample_rate))
    meta.setdefault("orig_channels", 1 if np.ndim(media.audio) == 1 else int(np.shape(media.audio)[0]))
    meta.setdefault("orig_duration", round(samples / media.sample_rate, 6))
    meta.setdefault("clip_start", 0.0)
    meta.setdefault("clip_end", round(meta["clip_start"] + duration, 6))
    return meta


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, (SkipItem, audio_mod.BadAudio, image_mod.BadImage)):
        return str(exc)
    if isinstance(exc, fmt.FormatError):
        return f"format: {exc}"
    if isinstance(exc, FileNotFoundError):
        return f"missing_file: {exc}"
    return f"error: {type(exc).__name__}: {exc}"


def process_item(load: Callable[[Any], Media], index: int, key: str, item: Any) -> Outcome:
    """Load, standardize and encode one item. Never raises: every failure becomes an Outcome."""
    out = Outcome(index, key, item)
    clock = time.perf_counter
    try:
        t0 = clock()
        media = load(item)
        t1 = clock()
        clip, duration = audio_mod.standardize(media.audio, media.sample_rate)
        t2 = clock()
        image = image_mod.standardize(media.image)
        t3 = clock()
        meta = complete_meta(media, duration)
        out.sample = fmt.encode_sample(key, clip, image, meta)
        t4 = clock()
        out.status, out.meta = WRITTEN, meta
        out.seconds = {"decode": t1 - t0, "resample": t2 - t1, "image": t3 - t2, "encode": t4 - t3}
    except Exception as exc:  # noqa: BLE001 - a bad item is a counted row, never a crash
        out.reason = describe_failure(exc)
    return out
