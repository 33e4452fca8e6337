"""The shard directory: file names, the commit rule, the build lock, and reading a shard's samples.

One directory holds the shards of one corpus split, each as::

    NNNNNN.tar.partial -> NNNNNN.tar        the samples (renamed once complete)
    NNNNNN.parquet                          one row per input item (the manifest)
    NNNNNN_stats.json                       written last: the shard's commit marker
    dataset.json                            the dataset-level summary
    NAME.PID.partial -> NAME                a small file being written by process PID

**The commit rule**: a shard counts once its ``NNNNNN_stats.json`` exists, parses as a JSON
object and its tar exists. Anything else with its stem is an interrupted build: ``prep shards``
removes it and builds the shard again; readers ignore it and say so. Everything that lists,
builds, inspects or reads shards calls this module, so the rule is spelled once.

A tar's members are grouped into samples the way webdataset groups them: consecutive members
sharing the name before the first dot.

**The build lock** (``.prep.lock``): a build holds its shards, a retry all of them, so two runs
never write one shard while ``--part`` runs share the directory. **The write lock**
(``.prep.write.lock``): the process writing one shard on behalf of a build (a Ray task, on any
node) holds that shard, so a retried attempt never writes over one still running.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import struct
import sys
import tarfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

DATASET_FILE = "dataset.json"
PARTIAL_SUFFIX = ".partial"
STATS_SUFFIX = "_stats.json"
LOCK_FILE = ".prep.lock"
WRITE_LOCK_FILE = ".prep.write.lock"


class ShardDirError(ValueError):
    """A shard directory cannot be used as it is; the message names the file and what to do."""


# ---------------------------------------------------------------------------------------------
# names


def shard_stem(shard: int) -> str:
    return f"{shard:06d}"


def tar_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / f"{shard_stem(shard)}.tar"


def parquet_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / f"{shard_stem(shard)}.parquet"


def stats_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / f"{shard_stem(shard)}{STATS_SUFFIX}"


def temp_path(path: Path, pid: int) -> Path:
    """Where process ``pid`` writes ``path`` before renaming it into place: a name of its own,
    so two runs sharing a directory (``--part``) never write into one temporary file."""
    return path.with_name(f"{path.name}.{pid}{PARTIAL_SUFFIX}")


def temp_writer(path: Path) -> int | None:
    """The pid in a ``temp_path`` name (``dataset.json.4242.partial`` -> 4242); None for other names."""
    base, _, pid = path.name.removesuffix(PARTIAL_SUFFIX).rpartition(".")
    return int(pid) if path.name.endswith(PARTIAL_SUFFIX) and base and pid.isdigit() else None


def shard_index(path: Path) -> int | None:
    """``000012.tar`` / ``000012_stats.json`` / ``000012.parquet`` -> 12; None for other names."""
    stem = Path(path).name.split(".")[0].split("_")[0]
    return int(stem) if len(stem) == 6 and stem.isdigit() else None


# ---------------------------------------------------------------------------------------------
# the commit rule


def read_json(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


_STATS_CACHE: dict[str, tuple[tuple[int, int], dict | None]] = {}


def read_stats(path: str | os.PathLike) -> dict | None:
    """A commit marker's contents, or None when it is missing or unreadable (a torn or corrupt
    file is not a commit: the shard is treated as uncommitted and rebuilt)."""
    # Cached by (mtime, size): a build rescans every marker after each shard, and re-parsing
    # thousands of unchanged files each time would make a long build quadratic.
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None  # a fifo or device would block the reader: not a commit
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _STATS_CACHE.get(os.fspath(path))
    if cached is None or cached[0] != stamp:
        cached = (stamp, _parse_stats(path))
        _STATS_CACHE[os.fspath(path)] = cached
    return cached[1]


def _parse_stats(path: str | os.PathLike) -> dict | None:
    try:
        stats = read_json(path)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return stats if isinstance(stats, dict) and isinstance(stats.get("written", 0), int) else None


def is_committed(out_dir: Path, shard: int) -> bool:
    return tar_path(out_dir, shard).exists() and read_stats(stats_path(out_dir, shard)) is not None


def remove_uncommitted(out_dir: Path, shard: int) -> list[Path]:
    """Delete the leftovers of an interrupted build of ``shard``; returns what was removed."""
    doomed = [p for p in Path(out_dir).glob(f"{shard_stem(shard)}*") if shard_index(p) == shard]
    for p in doomed:
        p.unlink()
    return doomed


def remove_dead_temp_files(out_dir: Path, started: float) -> list[Path]:
    """Delete the temporary files of directory-wide files (``dataset.json``) left by writers that
    were killed mid-write; returns what was removed. Shards' own leftovers are
    ``remove_uncommitted``'s. ``--part`` runs share the directory, possibly from other hosts, so a
    file goes only when its writer's pid is not alive here AND it is older than ``started`` (this
    run's start, ``time.time()``): a writer still alive elsewhere has rewritten it since."""
    doomed = [
        p
        for p in Path(out_dir).glob(f"*{PARTIAL_SUFFIX}")
        if shard_index(p) is None and (pid := temp_writer(p)) is not None and not _pid_alive(pid) and _mtime(p) < started
    ]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")  # renamed into place meanwhile: nothing to remove


@dataclass(frozen=True)
class CommittedShard:
    index: int
    tar: Path
    stats: dict

    @property
    def samples(self) -> int:
        return int(self.stats.get("written", 0))


@dataclass
class DirListing:
    """What a shard directory holds, by the commit rule."""

    committed: list[CommittedShard]
    uncommitted_tars: list[str]  # tars without a (readable) marker
    corrupt_markers: list[str]  # stats files that exist but do not parse
    markers_without_tar: list[str]
    partial_files: list[str]

    def problems(self) -> str:
        """One line naming what is ignored, or "" when nothing is."""
        parts = []
        if self.uncommitted_tars:
            parts.append(f"{len(self.uncommitted_tars)} uncommitted shard(s) ({', '.join(self.uncommitted_tars[:3])})")
        if self.corrupt_markers:
            parts.append(f"{len(self.corrupt_markers)} unreadable commit marker(s) ({', '.join(self.corrupt_markers[:3])})")
        if self.markers_without_tar:
            parts.append(f"{len(self.markers_without_tar)} marker(s) without their tar ({', '.join(self.markers_without_tar[:3])})")
        return "; ".join(parts)


def list_dir(directory: str | os.PathLike) -> DirListing:
    """Every shard of ``directory`` sorted by index, split by the commit rule."""
    d = Path(directory)
    tars = {i: p for p in d.glob("*.tar") if (i := shard_index(p)) is not None and p.is_file()}
    markers = {i: p for p in d.glob(f"*{STATS_SUFFIX}") if (i := shard_index(p)) is not None}
    committed, corrupt = [], []
    for i, marker in sorted(markers.items()):
        stats = read_stats(marker)
        if stats is None:
            corrupt.append(marker.name)
        elif i in tars:
            committed.append(CommittedShard(i, tars[i], stats))
    done = {s.index for s in committed}
    return DirListing(
        committed=committed,
        uncommitted_tars=sorted(p.name for i, p in tars.items() if i not in done),
        corrupt_markers=corrupt,
        markers_without_tar=sorted(p.name for i, p in markers.items() if i not in tars),
        partial_files=sorted(p.name for p in d.glob(f"*{PARTIAL_SUFFIX}")),
    )


def committed_shards(directory: str | os.PathLike) -> list[CommittedShard]:
    return list_dir(directory).committed


def looks_like_shard_dir(d: Path) -> bool:
    return (d / DATASET_FILE).exists() or any(d.glob("*.tar")) or any(d.glob(f"*{STATS_SUFFIX}")) or any(d.glob(f"*{PARTIAL_SUFFIX}"))


# ---------------------------------------------------------------------------------------------
# the build lock


@contextlib.contextmanager
def build_lock(directory: str | os.PathLike, shards: Sequence[int] | None) -> Iterator[None]:
    """Hold ``directory``'s build lock for the given shard indices (None: every shard), or raise
    ShardDirError at once naming the holder's pid.

    One byte of ``LOCK_FILE`` per shard index, as POSIX record locks: ``--part`` runs of one
    Slurm array build disjoint shards into one directory and never conflict, while two runs of
    one part (or a retry, which takes every shard) do. The kernel drops the locks of a killed
    process, and forked pool workers do not inherit them.
    """
    d = Path(directory)
    fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for start, length in _runs(shards):
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
            except OSError as exc:
                if exc.errno in _NO_LOCKS:
                    warnings.warn(f"{d} does not support file locks: make sure no other prep run writes into it", stacklevel=3)
                    break
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise ShardDirError(_lock_holder(fd, start, length, d)) from None
        yield
    finally:
        os.close(fd)  # releases every lock this process holds on the file


@contextlib.contextmanager
def write_lock(directory: str | os.PathLike, shard: int, wait: float) -> Iterator[None]:
    """Hold ``shard``'s write lock, waiting up to ``wait`` seconds for a process still writing it
    (an earlier attempt whose node was lost); ShardDirError naming the holder after that. The
    kernel drops the lock of a killed writer, so a retry after a crash finds it free."""
    d = Path(directory)
    fd = os.open(d / WRITE_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, shard)
                break
            except OSError as exc:
                if exc.errno in _NO_LOCKS:
                    break  # the build lock already warned about this filesystem
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise ShardDirError(_lock_holder(fd, shard, 1, d)) from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # e.g. an NFS mount without a lock daemon


def _runs(shards: Sequence[int] | None) -> list[tuple[int, int]]:
    """Shard indices -> (start, length) byte ranges of consecutive indices; length 0 = to the end."""
    if shards is None:
        return [(0, 0)]
    runs: list[list[int]] = []
    for i in sorted(shards):
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1][1] += 1
        else:
            runs.append([i, 1])
    return [(a, n) for a, n in runs]


def _lock_holder(fd: int, start: int, length: int, d: Path) -> str:
    who = "another prep run"
    if sys.platform.startswith("linux"):  # struct flock layout: short, short, off_t, off_t, pid_t
        query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
        l_type, _, _, _, pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, query))
        if l_type != fcntl.F_UNLCK:
            who = f"another prep run (pid {pid})"
    return (
        f"{d} is being built by {who}; wait for it to finish (or stop it), or build a --part that "
        "run does not cover"
    )


# ---------------------------------------------------------------------------------------------
# reading a tar's samples


def iter_tar_samples(path: str | os.PathLike) -> Iterator[dict]:
    """Raw samples (``__key__`` + member bytes) of a shard tar, in file order, grouped the way
    webdataset groups them: consecutive members sharing the name before the first dot."""
    sample: dict | None = None
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if sample is not None and sample["__key__"] != key:
                yield sample
                sample = None
            if sample is None:
                sample = {"__key__": key}
            sample[ext] = tar.extractfile(member).read()
    if sample is not None:
        yield sample


def tar_keys(path: str | os.PathLike) -> list[str]:
    """The sample keys of a tar in file order, read from its headers only (no member data)."""
    keys: dict[str, None] = {}
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if member.isfile():
                keys.setdefault(member.name.split(".", 1)[0], None)
    return list(keys)
