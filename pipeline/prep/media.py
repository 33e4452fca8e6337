"""What a corpus reader hands the shard builder: ``Media`` from its loader, ``SkipItem`` for bad
input, the path check every reader applies to paths written in metadata, and the names its
loader and key function are recorded under in ``dataset.json`` (``registered_loader``,
``registered_key``; ``describe_loader``, ``describe_key``).

A name is given where the function is defined, so the builder records it without knowing any
reader; ``pipeline.prep.loaders`` maps the names back to the functions it lists, the only ones
``prep retry`` ever runs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from pipeline.atomic import dumps_strict

_F = TypeVar("_F", bound=Callable)
# kind ("loader" or "key") -> {function: name}. Looked up by identity, so a wrapper of a
# registered function (which may behave otherwise) records nothing.
_NAMES: dict[str, dict[Callable, str]] = {"loader": {}, "key": {}}


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


def _register(kind: str, name: str) -> Callable[[_F], _F]:
    def mark(fn: _F) -> _F:
        _NAMES[kind][fn] = name
        return fn

    return mark


def registered_loader(name: str) -> Callable[[_F], _F]:
    """Decorator: ``dataset.json`` records this loader (or a functools.partial of it with JSON
    arguments) as ``{"name": name, ...}``; ``pipeline.prep.loaders`` must list it."""
    return _register("loader", name)


def registered_key(name: str) -> Callable[[_F], _F]:
    """Decorator: ``dataset.json`` records this key function as ``name``."""
    return _register("key", name)


def describe_loader(load: Callable) -> dict | None:
    """``{"name", "args", "kwargs"}`` for a registered loader or a functools.partial of one with
    JSON arguments; None for anything else."""
    args, kwargs = (), {}
    if isinstance(load, functools.partial):
        load, args, kwargs = load.func, load.args, load.keywords
    name = _name_of("loader", load)
    if name is None:
        return None
    spec = {"name": name, "args": list(args), "kwargs": dict(kwargs)}
    try:
        dumps_strict(spec)
    except (TypeError, ValueError):
        return None
    return spec


def describe_key(key: Callable) -> str | None:
    return _name_of("key", key)


def _name_of(kind: str, fn: Callable) -> str | None:
    # by identity: any callable may be handed in, hashable or not
    return next((name for f, name in _NAMES[kind].items() if f is fn), None)
