"""The project's one way to write a file that readers must never see half-written, and its one
strict-JSON encoder.

**Atomic writes.** A file is written under a temporary name of its own in the same directory
(``NAME.PID.partial``: two processes never share one, and ``shard_dir`` recognizes and sweeps a
dead writer's), flushed and fsynced, renamed over ``NAME``, and the directory is fsynced, so after
a crash (kill -9, power loss, a full disk) a reader finds the old file or the new one, never a
torn one. ``write_atomic``/``write_json`` do the whole sequence for bytes or JSON;
``atomic_path`` gives a writer that takes a file name (safetensors, ``np.savez``, yt-dlp's output)
the temporary path and commits it on success; ``replace``/``remove``/``replace_dir`` are the steps
for files that must change together (a checkpoint's weights and its ``config.json``, a shard swapped
in behind its commit marker, a training checkpoint's directory).

**Strict JSON.** Every JSON file the project writes is readable by any parser: ``strict_json``
turns NaN and ±infinity into ``null`` and numpy scalars/arrays, tuples and paths into plain JSON
types, and ``dumps_strict`` refuses (``ValueError``) anything that would still need the
non-standard ``NaN``/``Infinity`` literals.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PARTIAL_SUFFIX = ".partial"


# ---------------------------------------------------------------------------------------------
# strict JSON


def strict_json(value: Any) -> Any:
    """``value`` as plain JSON types: numpy scalars/arrays and tuples -> numbers and lists, paths ->
    strings, dict keys -> strings, and NaN/±inf -> None (strict JSON has no such numbers)."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        # arrays and scalars alike (``tolist`` gives Python numbers), without importing numpy here
        return strict_json(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def dumps_strict(obj: Any, *, sort_keys: bool = True, **kwargs) -> str:
    """JSON (UTF-8 text, sorted keys unless told) that every parser reads: NaN/inf are refused
    (ValueError) rather than written as ``NaN``/``Infinity``; ``strict_json`` turns them into null
    first."""
    return json.dumps(obj, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False, **kwargs)


# ---------------------------------------------------------------------------------------------
# atomic writes


def temp_path(path: str | os.PathLike, pid: int | None = None) -> Path:
    """Where process ``pid`` (this one by default) writes ``path`` before renaming it into place."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid() if pid is None else pid}{PARTIAL_SUFFIX}")


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or unlink in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename itself still happened
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def replace(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Commit a complete temporary file: fsync it, rename it over ``path``, fsync the directory."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def remove(path: str | os.PathLike) -> None:
    """Remove ``path`` (if there) durably: a later ``replace`` cannot reach the disk before it."""
    Path(path).unlink(missing_ok=True)
    fsync_dir(Path(path).parent)


def discard(tmp: str | os.PathLike) -> None:
    """Remove a temporary file that was not committed; a failure here never hides the error that
    stopped the write."""
    with contextlib.suppress(OSError):
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields the temporary path to write ``path`` at; on success the file is committed
    (``replace``), on any exception it is removed and ``path`` is left as it was."""
    tmp = temp_path(path)
    try:
        yield tmp
        replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """``path`` holds ``data`` (text as UTF-8) or, after a crash, what it held before."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, sort_keys: bool = True) -> None:
    """``obj`` as strict JSON (``strict_json``, UTF-8, a final newline), atomically."""
    write_atomic(path, dumps_strict(strict_json(obj), indent=indent, sort_keys=sort_keys) + "\n")


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Commit a directory written whole under a temporary name: every file in it is fsynced, an
    older ``final`` is removed, ``tmp`` is renamed to ``final`` and the parent fsynced. A crash
    leaves ``final`` complete, or absent with ``tmp`` beside it; never a directory with some files
    new and some old."""
    tmp, final = Path(tmp), Path(final)
    for root, _, files in os.walk(tmp):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(root)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)
