"""The fixed registry of the project's own corpus loaders, by short name.

``dataset.json`` records the loader that built it as ``{"name": "places", "args": [...],
"kwargs": {...}}`` (JSON values only) so that ``prep retry`` can re-create it, and its key
function by name (``"key": "places"``). Each function carries its name where it is defined
(``pipeline.prep.media.registered_loader``), so the builder records it without importing this
table; only the loaders listed here are ever resolved: a data file cannot name code to run. A
loader not registered (a test's or a script's own function) is recorded as null and retry then
needs it passed in.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.prep import audioset, generic, places
from pipeline.prep.media import describe_loader
from pipeline.prep.synthetic import samples
from pipeline.shard_dir import ShardDirError

LOADERS: dict[str, Callable] = {
    describe_loader(fn)["name"]: fn
    for fn in (places.load_item, audioset.load_from_dir, audioset.load_downloaded, generic.load_item, samples.load_pair)
}


def resolve_loader(spec: Any, source: Path) -> Callable:
    """The loader ``spec`` (read from ``source``) describes; ShardDirError unless it names a
    registered loader with arguments that loader accepts."""
    name = spec.get("name") if isinstance(spec, dict) else None
    if not isinstance(name, str) or name not in LOADERS:
        shown = repr(name) if isinstance(name, str) else repr(spec)[:80]
        raise ShardDirError(
            f"{source} names loader {shown}, which is not one of {', '.join(LOADERS)}; "
            "rebuild with `prep shards ...` (the command that built the directory)"
        )
    args, kwargs = spec.get("args", []), spec.get("kwargs", {})
    try:
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise TypeError("args must be a list and kwargs an object")
        inspect.signature(LOADERS[name]).bind_partial(*args, **kwargs)
    except TypeError as exc:
        raise ShardDirError(
            f"{source} gives loader {name!r} arguments it does not take ({exc}); rebuild with `prep shards ...`"
        ) from None
    return functools.partial(LOADERS[name], *args, **kwargs)
