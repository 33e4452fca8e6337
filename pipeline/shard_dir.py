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

**In an object store** (``s3://bucket/prefix``, through ``pipeline.storage``) the names and the
commit rule are the same: a shard is written in a local temporary folder, then ``publish_shard``
uploads its tar, its parquet and, last, its marker, each PUT atomic (nothing ``.partial`` is ever
stored), so an upload killed at any point leaves an uncommitted shard that the next build
removes. Listing is one LIST request per 1,000 objects, and a marker already read is not fetched
again while its ETag is unchanged. Locks are lease objects under ``.prep.lock/`` (there is no
fcntl): a build writes ``build-<run>.json`` naming its host, pid, shards and expiry, then lists
the others and refuses when a live one covers any of its shards; a shard's writer creates
``write-NNNNNN.json`` with a conditional PUT (``If-None-Match: *``; a stale one is taken over
with ``If-Match``) and reads it back. Leases are renewed while held and deleted on release; one
whose expiry passed, or whose process on this host is gone (kill -9), is stale.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import struct
import sys
import tarfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import atomic, storage
from pipeline.storage import Location, S3Path

DATASET_FILE = "dataset.json"
PARTIAL_SUFFIX = atomic.PARTIAL_SUFFIX
STATS_SUFFIX = "_stats.json"
LOCK_FILE = ".prep.lock"
WRITE_LOCK_FILE = ".prep.write.lock"
LEASE_DIR = ".prep.lock"  # in an object store: the lease objects' "folder"
LEASE_SECONDS = 120.0  # a lease not renewed for this long is stale (renewed every quarter of it)


class ShardDirError(ValueError):
    """A shard directory cannot be used as it is; the message names the file and what to do."""


# ---------------------------------------------------------------------------------------------
# names


def shard_stem(shard: int) -> str:
    return f"{shard:06d}"


def tar_path(out_dir: Location | str, shard: int) -> Location:
    return storage.as_location(out_dir) / f"{shard_stem(shard)}.tar"


def parquet_path(out_dir: Location | str, shard: int) -> Location:
    return storage.as_location(out_dir) / f"{shard_stem(shard)}.parquet"


def stats_path(out_dir: Location | str, shard: int) -> Location:
    return storage.as_location(out_dir) / f"{shard_stem(shard)}{STATS_SUFFIX}"


def temp_path(path: Path, pid: int) -> Path:
    """Where process ``pid`` writes ``path`` before renaming it into place (``pipeline.atomic``'s
    name): a name of its own, so two runs sharing a directory (``--part``) never write into one
    temporary file."""
    return atomic.temp_path(path, pid)


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


def read_json(path: str | os.PathLike | S3Path) -> dict:
    """A JSON file or object (OSError when it is missing, ValueError when it does not parse)."""
    loc = storage.as_location(path)
    if isinstance(loc, S3Path):
        return json.loads(storage.read_bytes(loc))
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str | os.PathLike | S3Path, obj) -> None:
    """``obj`` as the project's strict JSON (``pipeline.atomic``), written whole: the same bytes
    on disk and in a store."""
    loc = storage.as_location(path)
    if isinstance(loc, S3Path):
        storage.write_bytes(loc, (atomic.dumps_strict(atomic.strict_json(obj), indent=1) + "\n").encode())
    else:
        atomic.write_json(loc, obj)


_STATS_CACHE: dict[str, tuple[tuple[int, int], dict | None]] = {}


def read_stats(path: str | os.PathLike) -> dict | None:
    """A commit marker's contents, or None when it is missing or unreadable (a torn or corrupt
    file is not a commit: the shard is treated as uncommitted and rebuilt)."""
    # Cached by (mtime, size): a build rescans every marker after each shard, and re-parsing
    # thousands of unchanged files each time would make a long build quadratic.
    if isinstance(loc := storage.as_location(path), S3Path):
        return _read_remote_stats(loc)
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
    return _checked_stats(stats)


def _checked_stats(stats) -> dict | None:
    return stats if isinstance(stats, dict) and isinstance(stats.get("written", 0), int) else None


def _read_remote_stats(loc: S3Path, stamp: str | None = None) -> dict | None:
    """A marker object's contents (None when missing or unreadable); with ``stamp`` (its ETag from
    a listing) a marker read before is not fetched again."""
    cached = _STATS_CACHE.get(loc.url)
    if stamp is not None and cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        data, etag = storage.read_object(loc)
    except FileNotFoundError:
        return None
    try:
        stats = _checked_stats(json.loads(data))
    except (ValueError, UnicodeDecodeError):
        stats = None  # a torn or corrupt marker is not a commit, as on disk
    _STATS_CACHE[loc.url] = (etag, stats)
    return stats


def is_committed(out_dir: Location | str, shard: int) -> bool:
    return storage.exists(tar_path(out_dir, shard)) and read_stats(stats_path(out_dir, shard)) is not None


def remove_uncommitted(out_dir: Location | str, shard: int) -> list[Location]:
    """Delete the leftovers of an interrupted build of ``shard``; returns what was removed. In a
    store this includes the unfinished multipart upload of a killed uploader."""
    d = storage.as_location(out_dir)
    if isinstance(d, S3Path):
        doomed = [d / name for name in storage.list_dir(d) if shard_index(Path(name)) == shard]
        for loc in doomed:
            storage.remove(loc)
        storage.abort_uploads(d / shard_stem(shard))
        return doomed
    doomed = [p for p in Path(out_dir).glob(f"{shard_stem(shard)}*") if shard_index(p) == shard]
    for p in doomed:
        p.unlink()
    return doomed


def publish_shard(staging: Path, shard: int, out: S3Path, replace: bool = False) -> None:
    """Upload a shard written (and committed) in the local folder ``staging`` by the commit rule:
    tar, parquet, then the marker; ``replace``: an older committed shard is there, whose marker is
    removed first (an interruption then leaves it uncommitted, as ``prep retry`` does on disk)."""
    if replace:
        storage.remove(stats_path(out, shard))
    for name in (tar_path, parquet_path, stats_path):
        storage.put_file(name(staging, shard), name(out, shard))


def move_shard(staging: S3Path, shard: int, out: S3Path) -> None:
    """Swap a shard committed under the store prefix ``staging`` in for ``out``'s (``prep retry``):
    the old marker goes first, then tar, parquet and marker are copied in that order (server-side)
    and the staged copies deleted; an interruption leaves the shard uncommitted, never mixed."""
    storage.remove(stats_path(out, shard))
    for name in (tar_path, parquet_path, stats_path):
        storage.copy(name(staging, shard), name(out, shard))
    for name in (stats_path, tar_path, parquet_path):
        storage.remove(name(staging, shard))


def remove_dead_temp_files(out_dir: Path, started: float) -> list[Path]:
    """Delete the temporary files of directory-wide files (``dataset.json``) left by writers that
    were killed mid-write; returns what was removed. Shards' own leftovers are
    ``remove_uncommitted``'s. ``--part`` runs share the directory, possibly from other hosts, so a
    file goes only when its writer's pid is not alive here AND it is older than ``started`` (this
    run's start, ``time.time()``): a writer still alive elsewhere has rewritten it since. A
    store holds no temporary files (each PUT is whole)."""
    if storage.is_remote(out_dir):
        return []
    doomed = [
        p
        for p in Path(out_dir).glob(f"*{PARTIAL_SUFFIX}")
        if shard_index(p) is None
        and (pid := temp_writer(p)) is not None
        and not _pid_alive(pid)
        and _mtime(p) < started
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
    tar: Location  # a Path, or an S3Path in a store
    stats: dict
    tar_bytes: int | None = None  # the tar's size as listed

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
            parts.append(
                f"{len(self.corrupt_markers)} unreadable commit marker(s) ({', '.join(self.corrupt_markers[:3])})"
            )
        if self.markers_without_tar:
            parts.append(
                f"{len(self.markers_without_tar)} marker(s) without their tar "
                f"({', '.join(self.markers_without_tar[:3])})"
            )
        return "; ".join(parts)


def list_dir(directory: str | os.PathLike | S3Path) -> DirListing:
    """Every shard of ``directory`` sorted by index, split by the commit rule."""
    if isinstance(loc := storage.as_location(directory), S3Path):
        return _list_remote(loc)
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


def _list_remote(d: S3Path) -> DirListing:
    """``list_dir`` of a store prefix: one listing, then each marker not read before."""
    entries = storage.list_dir(d)
    tars = {i: name for name in entries if name.endswith(".tar") and (i := shard_index(Path(name))) is not None}
    markers = {
        i: name for name in entries if name.endswith(STATS_SUFFIX) and (i := shard_index(Path(name))) is not None
    }
    committed, corrupt = [], []
    for i, name in sorted(markers.items()):
        stats = _read_remote_stats(d / name, entries[name].stamp)
        if stats is None:
            corrupt.append(name)
        elif i in tars:
            committed.append(CommittedShard(i, d / tars[i], stats, entries[tars[i]].size))
    done = {s.index for s in committed}
    return DirListing(
        committed=committed,
        uncommitted_tars=sorted(name for i, name in tars.items() if i not in done),
        corrupt_markers=corrupt,
        markers_without_tar=sorted(name for i, name in markers.items() if i not in tars),
        partial_files=[],
    )


def committed_shards(directory: str | os.PathLike | S3Path) -> list[CommittedShard]:
    return list_dir(directory).committed


def looks_like_shard_dir(d: Path | S3Path) -> bool:
    if isinstance(d, S3Path):
        return any(name == DATASET_FILE or name.endswith((".tar", STATS_SUFFIX)) for name in storage.list_dir(d))
    return (
        (d / DATASET_FILE).exists()
        or any(d.glob("*.tar"))
        or any(d.glob(f"*{STATS_SUFFIX}"))
        or any(d.glob(f"*{PARTIAL_SUFFIX}"))
    )


# ---------------------------------------------------------------------------------------------
# the build lock


@contextlib.contextmanager
def build_lock(directory: str | os.PathLike, shards: Sequence[int] | None) -> Iterator[None]:
    """Hold ``directory``'s build lock for the given shard indices (None: every shard), or raise
    ShardDirError at once naming the holder's pid.

    One byte of ``LOCK_FILE`` per shard index, as POSIX record locks: ``--part`` runs of one
    Slurm array build disjoint shards into one directory and never conflict, while two runs of
    one part (or a retry, which takes every shard) do. The kernel drops the locks of a killed
    process, and forked pool workers do not inherit them. In a store: a lease (module docstring).
    """
    if isinstance(loc := storage.as_location(directory), S3Path):
        with _build_lease(loc, shards):
            yield
        return
    d = Path(directory)
    fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for start, length in _runs(shards):
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
            except OSError as exc:
                if exc.errno in _NO_LOCKS:
                    warnings.warn(
                        f"{d} does not support file locks: make sure no other prep run writes into it", stacklevel=3
                    )
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
    kernel drops the lock of a killed writer, so a retry after a crash finds it free. In a store:
    a lease (module docstring)."""
    if isinstance(loc := storage.as_location(directory), S3Path):
        with _write_lease(loc, shard, wait):
            yield
        return
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
    return f"{d} is being built by {who}; wait for it to finish (or stop it), or build a --part that run does not cover"


# ---------------------------------------------------------------------------------------------
# leases: the locks of a shard directory in an object store


def _lease_body(shards: Sequence[int] | None) -> dict:
    return {
        "run": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "shards": None if shards is None else _runs(shards),
        "expires": time.time() + LEASE_SECONDS,
    }


def _read_lease(loc: S3Path) -> tuple[dict | None, str]:
    """A lease's contents and ETag; (None, "") when it is gone, (None, etag) when unreadable."""
    try:
        data, etag = storage.read_object(loc)
    except FileNotFoundError:
        return None, ""
    try:
        body = json.loads(data)
    except ValueError:
        return None, etag
    return (body, etag) if isinstance(body, dict) else (None, etag)


def _lease_live(body: dict | None) -> bool:
    """A lease still held: not expired, and not left by a process of this host that is gone."""
    if body is None or not isinstance(body.get("expires"), (int, float)) or body["expires"] < time.time():
        return False
    return not (
        body.get("host") == socket.gethostname() and isinstance(body.get("pid"), int) and not _pid_alive(body["pid"])
    )


def _covers(a: list | None, b: list | None) -> bool:
    """Do two leases' shard runs ((start, length), length 0 = to the end; None = all) overlap?"""
    if a is None or b is None:
        return True
    end = lambda start, n: float("inf") if n == 0 else start + n  # noqa: E731
    return any(s1 < end(s2, n2) and s2 < end(s1, n1) for s1, n1 in a for s2, n2 in b)


def _holder(d: S3Path, body: dict) -> str:
    until = time.strftime("%H:%M:%S", time.localtime(body.get("expires", 0)))
    return (
        f"{d} is being built by another prep run (host {body.get('host')}, pid {body.get('pid')}; its lease "
        f"{d / LEASE_DIR} runs until {until} unless renewed); wait for it to finish (or stop it), or build a "
        "--part that run does not cover"
    )


class _Renewal:
    """Rewrites a held lease with a later expiry every quarter of ``LEASE_SECONDS`` (If-Match its
    last ETag for a shared one, so a lease taken over meanwhile is not written back)."""

    def __init__(self, loc: S3Path, body: dict, etag: str | None):
        self.loc, self.body, self.etag = loc, body, etag
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"lease {loc}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(LEASE_SECONDS / 4):
            self.body["expires"] = time.time() + LEASE_SECONDS
            try:
                data = json.dumps(self.body).encode()
                self.etag = (
                    storage.write_bytes(self.loc, data, if_match=self.etag)
                    if self.etag is not None
                    else storage.write_bytes(self.loc, data)
                )
            except (storage.PreconditionFailed, storage.StorageError) as exc:
                warnings.warn(f"{self.loc}: lease not renewed ({exc})", stacklevel=1)

    def release(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        with contextlib.suppress(storage.StorageError):
            body, _ = _read_lease(self.loc)
            if body is not None and body.get("run") == self.body["run"]:
                storage.remove(self.loc)


@contextlib.contextmanager
def _build_lease(d: S3Path, shards: Sequence[int] | None) -> Iterator[None]:
    body = _lease_body(shards)
    mine = d / LEASE_DIR / f"build-{body['run']}.json"
    storage.write_bytes(mine, json.dumps(body).encode(), if_absent=True)
    renewal = _Renewal(mine, body, None)
    try:
        # Written first, checked after: of two runs that start together each sees the other's
        # lease, so both refuse rather than both build.
        for name in storage.list_dir(d / LEASE_DIR):
            if not name.startswith("build-") or name == mine.name:
                continue
            other, _ = _read_lease(d / LEASE_DIR / name)
            if _lease_live(other) and _covers(body["shards"], other.get("shards")):
                raise ShardDirError(_holder(d, other))
        yield
    finally:
        renewal.release()


@contextlib.contextmanager
def _write_lease(d: S3Path, shard: int, wait: float) -> Iterator[None]:
    body = _lease_body([shard])
    loc = d / LEASE_DIR / f"write-{shard_stem(shard)}.json"
    data = json.dumps(body).encode()
    deadline = time.monotonic() + wait
    while True:
        try:
            etag = storage.write_bytes(loc, data, if_absent=True)
        except storage.PreconditionFailed:
            other, other_etag = _read_lease(loc)
            if not other_etag:
                continue  # released meanwhile
            if not _lease_live(other):
                try:
                    etag = storage.write_bytes(loc, data, if_match=other_etag)  # take a stale lease over
                except storage.PreconditionFailed:
                    continue  # another process took it first
            elif time.monotonic() > deadline:
                raise ShardDirError(_holder(d, other)) from None
            else:
                time.sleep(0.5)
                continue
        # read back: a store that ignores If-None-Match lets a concurrent writer replace ours
        back, etag = _read_lease(loc)
        if back is not None and back.get("run") == body["run"]:
            break
        if time.monotonic() > deadline:
            raise ShardDirError(_holder(d, back or {})) from None
        time.sleep(0.5)
    renewal = _Renewal(loc, body, etag)
    try:
        yield
    finally:
        renewal.release()


# ---------------------------------------------------------------------------------------------
# reading a tar's samples
#
# The tars are walked here rather than by webdataset's tar_file_iterator + group_by_keys: those
# stream every member's bytes in file order, while the loader shuffles where samples sit and reads
# each one only once it is taken (random access); group_by_keys also ends the shard at a repeated member.

TAR_ERRORS = (tarfile.TarError, OSError, EOFError)  # a tar that cannot be read (on)


class _OpenTar:
    """A tar's file descriptor, shared by its ``SampleRef``s and closed with the last of them: a
    sample is read from the very file its offsets came from, even once its path is replaced
    (``prep retry`` swaps rewritten shards in)."""

    __slots__ = ("fd",)

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a fifo: no hang

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def __del__(self, _close=os.close):  # (os itself may be gone at interpreter exit)
        if getattr(self, "fd", None) is not None:
            _close(self.fd)


class _FetchedSample:
    """A sample of a tar in an object store, its members' bytes already read: a store is read front
    to back in one request (with read-ahead), never with one ranged request per member."""

    __slots__ = ("data",)

    def __init__(self):
        self.data: dict[int, bytes] = {}

    def pread(self, size: int, offset: int) -> bytes:
        return self.data.get(offset, b"")[:size]


class SampleRef:
    """Where one sample of a shard tar sits: its key, the tar (``url``: its path) and each member's
    ``(extension, offset, size)``. ``read_sample`` reads it."""

    __slots__ = ("key", "url", "members", "_tar")

    def __init__(self, key: str, url: str, tar: _OpenTar):
        self.key, self.url, self._tar = key, url, tar
        self.members: list[tuple[str, int, int]] = []


def sample_refs(path: str | os.PathLike) -> Iterator[SampleRef]:
    """Where each sample of a shard tar sits, in file order, from its headers alone, grouped the way
    webdataset groups members: consecutive members sharing the name before the first dot.

    A sample is yielded once the header after it has been read, i.e. once its members are known
    to be whole; a truncated or corrupt tar raises one of ``TAR_ERRORS`` there.
    """
    if isinstance(loc := storage.as_location(path), S3Path):
        yield from _fetched_refs(loc)
        return
    url = os.fspath(path)
    tar_file = _OpenTar(url)
    with os.fdopen(tar_file.fd, "rb", closefd=False) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        yield from _grouped(tar, lambda key: SampleRef(key, url, tar_file))


def _fetched_refs(loc: S3Path) -> Iterator[SampleRef]:
    """``sample_refs`` of a tar in a store: one sequential read (``storage.open_read``), each
    sample's bytes kept in its ref. A transient failure is retried by the reader; a lost object is
    an OSError (one of ``TAR_ERRORS``); a store that stays unreachable is a StorageError."""

    def fetch(ref: SampleRef, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        data = tar.extractfile(member).read()
        if len(data) != member.size:
            raise tarfile.ReadError(f"unexpected end of data in {loc.url} ({member.name})")
        ref._tar.data[member.offset_data] = data

    with storage.open_read(loc) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        yield from _grouped(tar, lambda key: SampleRef(key, loc.url, _FetchedSample()), fetch)


def _grouped(
    tar: tarfile.TarFile,
    new_ref: Callable[[str], SampleRef],
    fetch: Callable[[SampleRef, tarfile.TarFile, tarfile.TarInfo], None] | None = None,
) -> Iterator[SampleRef]:
    """The file members of ``tar`` as samples (``new_ref(key)``), grouped the way webdataset
    groups them; each sample is yielded once the header after it has been read. ``fetch``: called
    with each member as its header is read (a stream must be read in passing)."""
    ref: SampleRef | None = None
    for member in tar:
        if not member.isfile() or member.issparse():  # (a sparse member's bytes are not stored as is)
            continue
        key, _, ext = member.name.partition(".")
        if ref is not None and ref.key != key:
            yield ref
            ref = None
        if ref is None:
            ref = new_ref(key)
        if fetch is not None:
            fetch(ref, tar, member)
        ref.members.append((ext, member.offset_data, member.size))
    if ref is not None:
        yield ref


def read_sample(ref: SampleRef) -> dict:
    """The raw sample: ``__key__``, ``__url__`` (the tar's path) and each member's bytes (a member
    repeated within a sample: the last one). Raises ``tarfile.ReadError`` when the tar has lost
    them since (truncated)."""
    sample = {"__key__": ref.key, "__url__": ref.url}
    for ext, offset, size in ref.members:
        data = ref._tar.pread(size, offset)
        if len(data) != size:
            raise tarfile.ReadError(f"unexpected end of data in {ref.url} ({ref.key}.{ext})")
        sample[ext] = data
    return sample


def shard_sample_refs(
    paths: Iterable[str | os.PathLike], unreadable: Callable[[str, Exception, bool], None] | None = None
) -> Iterator[SampleRef]:
    """``sample_refs`` of each tar in ``paths`` in turn. A tar that cannot be read (on) goes to
    ``unreadable(path, error, yielded_any)`` and the next one follows (None: the error is raised)."""
    return _each_tar(paths, sample_refs, unreadable)


def shard_samples(
    paths: Iterable[str | os.PathLike], unreadable: Callable[[str, Exception, bool], None] | None = None
) -> Iterator[dict]:
    """The raw samples (``read_sample``: with ``__url__``) of each tar in ``paths`` in turn, read in
    file order; an unreadable tar as in ``shard_sample_refs``."""
    return _each_tar(paths, _read_in_order, unreadable)


def _read_in_order(path: str | os.PathLike) -> Iterator[dict]:
    for ref in sample_refs(path):
        yield read_sample(ref)


def _each_tar(paths, walk, unreadable) -> Iterator:
    for path in paths:
        yielded = False
        try:
            for found in walk(path):
                yielded = True
                yield found
        except TAR_ERRORS as exn:
            if unreadable is None:
                raise
            unreadable(_name(path), exn, yielded)


def _name(path: str | os.PathLike | S3Path) -> str:
    return str(path) if isinstance(path, S3Path) else os.fspath(path)


def iter_tar_samples(path: str | os.PathLike) -> Iterator[dict]:
    """Raw samples (``__key__`` + member bytes) of one shard tar, in file order (``sample_refs``)."""
    for sample in _read_in_order(path):
        del sample["__url__"]
        yield sample


def tar_keys(path: str | os.PathLike) -> list[str]:
    """The sample keys of a tar in file order, read from its headers only (no member data)."""
    return list(dict.fromkeys(ref.key for ref in sample_refs(path)))
