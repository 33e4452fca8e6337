"""The fixed registry of the project's own corpus loaders and key functions, by short name.

``dataset.json`` records the loader that built it as ``{"name": "places", "args": [...],
"kwargs": {...}}`` (JSON values only) so that ``prep retry`` can re-create it. Only the names in
this table are ever resolved: a data file cannot name code to run. A loader not in the table
(a test's or a script's own function) is recorded as null and retry then needs it passed in.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.prep.writer import dumps_strict
from pipeline.shard_dir import ShardDirError


def _registry() -> tuple[dict[str, Callable], dict[str, Callable]]:
    # Imported on first use, not at the top: the corpus readers import the builder, which
    # imports this module.
    from pipeline.prep import audioset, places
    from pipeline.prep.synthetic import samples

    loaders = {
        "places": places.load_item,
        "audioset": audioset.load_from_dir,
        "audioset-download": audioset.load_downloaded,
        "synthetic": samples.load_pair,
    }
    keys = {"places": places.item_key, "audioset": audioset.item_key, "synthetic": samples.sample_key}
    return loaders, keys


def describe_loader(load: Callable) -> dict | None:
    """``{"name", "args", "kwargs"}`` for a registered loader or a functools.partial of one with
    JSON arguments; None for anything else."""
    args, kwargs = (), {}
    if isinstance(load, functools.partial):
        load, args, kwargs = load.func, load.args, load.keywords
    name = _name_of(load, _registry()[0])
    if name is None:
        return None
    spec = {"name": name, "args": list(args), "kwargs": dict(kwargs)}
    try:
        dumps_strict(spec)
    except (TypeError, ValueError):
        return None
    return spec


def describe_key(key: Callable) -> str | None:
    return _name_of(key, _registry()[1])


def _name_of(fn: Callable, table: dict[str, Callable]) -> str | None:
    return next((name for name, f in table.items() if f is fn), None)


def resolve_loader(spec: Any, source: Path) -> Callable:
    """The loader ``spec`` (read from ``source``) describes; ShardDirError unless it names a
    registered loader with arguments that loader accepts."""
    loaders = _registry()[0]
    name = spec.get("name") if isinstance(spec, dict) else None
    if not isinstance(name, str) or name not in loaders:
        shown = repr(name) if isinstance(name, str) else repr(spec)[:80]
        raise ShardDirError(
            f"{source} names loader {shown}, which is not one of {', '.join(loaders)}; "
            "rebuild with `prep shards ...` (the command that built the directory)"
        )
    args, kwargs = spec.get("args", []), spec.get("kwargs", {})
    try:
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise TypeError("args must be a list and kwargs an object")
        inspect.signature(loaders[name]).bind_partial(*args, **kwargs)
    except TypeError as exc:
        raise ShardDirError(
            f"{source} gives loader {name!r} arguments it does not take ({exc}); rebuild with `prep shards ...`"
        ) from None
    return functools.partial(loaders[name], *args, **kwargs)
