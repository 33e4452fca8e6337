"""What a corpus reader hands the shard builder: ``Media`` from its loader, ``SkipItem`` for bad
input, and the path check every reader applies to paths written in metadata."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class Media:
    """One input item's media as a loader read it; the builder standardizes and encodes it."""

    audio: np.ndarray  # float32 [channels, samples] or [samples], any sample rate
    sample_rate: int
    image: Image.Image  # any size / mode
    meta: dict  # json fields: source, source_id, audio_type, clip_start, clip_end, labels, ...


class SkipItem(Exception):
    """Raised by a loader for bad input. ``str(exc)`` is the reason, by convention ``kind: detail``
    (``missing_audio: /data/x.wav``) so failures can be counted by kind."""


def reason_kind(reason: str) -> str:
    """``"missing_audio: /x.wav"`` -> ``"missing_audio"``; a reason without a kind is its own kind."""
    head = reason.split(":", 1)[0].strip()
    return head if head and len(head) <= 40 and " " not in head else "other"


def resolve_under(root: str | os.PathLike, relative: Any, what: str) -> Path:
    """``root/relative`` for a path read from metadata; SkipItem if it is not a relative path that
    stays inside ``root``. Checked lexically: symlinks the user placed under the root are trusted,
    ``..`` and absolute paths written in metadata are not."""
    if not isinstance(relative, str) or not relative.strip():
        raise SkipItem(f"bad_path: {what} path {relative!r} is not a non-empty string")
    if os.path.isabs(relative) or relative.startswith(("\\", "~")) or (len(relative) > 1 and relative[1] == ":"):
        raise SkipItem(f"path_escapes_root: {what} path {relative!r} is absolute; it must be relative to {root}")
    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(base, relative))
    if os.path.commonpath([base, full]) != base:
        raise SkipItem(f"path_escapes_root: {what} path {relative!r} leaves {root}")
    return Path(full)
