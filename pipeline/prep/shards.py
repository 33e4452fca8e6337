"""The generic shard builder: input items -> process pool -> WebDataset shards with manifests.

A corpus reader supplies an ordered list of JSON-serializable *items* and a picklable
``load(item) -> Media``. Shard ``i`` always holds input items ``[i*shard_size, (i+1)*shard_size)``,
so resuming, ``--part I/N`` and ``prep retry`` are deterministic. Per shard, in this order::

    NNNNNN.tar.partial -> NNNNNN.tar        the samples (renamed once complete)
    NNNNNN.parquet                          one row per input item: written or failed + reason
    NNNNNN_stats.json                       written last: the shard's commit marker

``dataset.json`` beside them is the dataset-level summary, rewritten after every shard.
A shard without its stats file is not committed: a rerun deletes its files and builds it again.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import datetime as dt
import functools
import hashlib
import importlib
import io
import json
import math
import multiprocessing
import os
import pickle
import signal
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline import audio as audio_mod
from pipeline import format as fmt
from pipeline import image as image_mod

WRITTEN, FAILED = "written", "failed"
STAGES = ("decode", "resample", "image", "encode", "write")
DATASET_FILE = "dataset.json"
PARTIAL_SUFFIX = ".partial"
DEFAULT_SHARD_SIZE = 1000

ROW_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),  # position in the input item list
        ("key", pa.string()),
        ("status", pa.string()),  # WRITTEN or FAILED
        ("reason", pa.string()),  # failure reason, "kind: detail"
        ("reason_kind", pa.string()),
        ("item", pa.string()),  # the input item as JSON: what `prep retry` re-runs
        ("duration", pa.float64()),
        ("orig_sample_rate", pa.int64()),
        ("orig_channels", pa.int64()),
        ("audio_type", pa.string()),
        ("meta", pa.string()),  # the sample's json member
    ]
)


# ---------------------------------------------------------------------------------------------
# what loaders return and raise


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


# ---------------------------------------------------------------------------------------------
# one item, in a worker


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
            "item": json.dumps(self.item, sort_keys=True, ensure_ascii=False, default=str),
            "duration": meta.get("duration"),
            "orig_sample_rate": meta.get("orig_sample_rate"),
            "orig_channels": meta.get("orig_channels"),
            "audio_type": meta.get("audio_type"),
            "meta": json.dumps(meta, sort_keys=True, ensure_ascii=False) if self.meta else None,
        }


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and paths inside metadata -> plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def complete_meta(media: Media, duration: float) -> dict:
    """The loader's metadata plus the fields the writer owns when the loader left them out."""
    meta = _plain(dict(media.meta))
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


# ---------------------------------------------------------------------------------------------
# loaders and key functions by name, so `prep retry` can rebuild them from dataset.json


def describe_callable(fn: Callable) -> dict | None:
    """``{"function": "module:name", "kwargs": {...}}`` for a top-level function or a
    functools.partial of one with JSON-serializable arguments; None otherwise."""
    args, kwargs = (), {}
    if isinstance(fn, functools.partial):
        fn, args, kwargs = fn.func, fn.args, fn.keywords
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or "<" in name or module == "__main__":
        return None
    spec = {"function": f"{module}:{name}", "args": list(args), "kwargs": dict(kwargs)}
    try:
        json.dumps(spec)
    except TypeError:
        return None
    return spec


def resolve_callable(spec: dict) -> Callable:
    module, name = spec["function"].split(":", 1)
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if spec.get("args") or spec.get("kwargs"):
        return functools.partial(obj, *spec.get("args", []), **spec.get("kwargs", {}))
    return obj


# ---------------------------------------------------------------------------------------------
# files of one shard


def shard_stem(shard: int) -> str:
    return f"{shard:06d}"


def tar_path(out_dir: Path, shard: int) -> Path:
    return out_dir / f"{shard_stem(shard)}.tar"


def parquet_path(out_dir: Path, shard: int) -> Path:
    return out_dir / f"{shard_stem(shard)}.parquet"


def stats_path(out_dir: Path, shard: int) -> Path:
    return out_dir / f"{shard_stem(shard)}_stats.json"


def is_committed(out_dir: Path, shard: int) -> bool:
    return stats_path(out_dir, shard).exists() and tar_path(out_dir, shard).exists()


def remove_uncommitted(out_dir: Path, shard: int) -> list[Path]:
    """Delete the leftovers of an interrupted build of ``shard``; returns what was removed."""
    stem = shard_stem(shard)
    doomed = [p for p in out_dir.glob(f"{stem}*") if p.name.split(".")[0].split("_")[0] == stem]
    for p in doomed:
        p.unlink()
    return doomed


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode())


class _HashingFile:
    """File wrapper that hashes what passes through, so the tar's sha256 costs no second read."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.size


class TarShardWriter:
    """Writes samples to ``NNNNNN.tar.partial``; ``close`` fsyncs and renames it to ``NNNNNN.tar``."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(path.name + PARTIAL_SUFFIX)
        self._file = open(self.tmp, "wb")
        self._hash = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hash, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, sample: dict) -> None:
        key = sample["__key__"]
        for ext in fmt.MEMBER_EXTS:
            data = sample[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            # Fixed owner/mode/mtime: the same samples give byte-identical tars on every rerun.
            info.size, info.mode, info.mtime = len(data), 0o444, 0
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> tuple[int, str]:
        """Finish the tar and rename it into place; returns (bytes, sha256)."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        return self._hash.size, self._hash.sha.hexdigest()

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


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


# ---------------------------------------------------------------------------------------------
# running items: inline or in a process pool, results always in input order


@dataclass
class _Task:
    index: int
    key: str
    item: Any
    ready: Callable[[], Outcome] | None = None  # precomputed outcome (bad key, kept sample)


def _init_worker() -> None:
    # Ctrl-C goes to the parent, which shuts the pool down; workers finishing their item is fine.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One worker per core: intra-op threads would only oversubscribe the CPUs.
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _preload_for_workers() -> None:
    # Import the resampler's torch once here, so forked workers inherit it instead of each
    # paying ~1 s to import it on their first clip (and again in every replacement pool).
    try:
        import torchaudio.functional  # noqa: F401
    except ImportError:
        pass


def _mp_context():
    # fork: workers inherit the imported modules (no per-worker import of torch/pyarrow) and any
    # index a reader built before the pool started.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


class _OrderedRunner:
    """Runs tasks with at most ``workers`` processes, yielding outcomes in task order.

    A worker that dies (segfault in a decoder, OOM kill) breaks a ProcessPoolExecutor for every
    item in flight. Those items are re-run one at a time in a fresh single-worker pool, so only
    the item that really kills its worker is recorded as ``worker_crashed``.
    """

    def __init__(self, load: Callable, workers: int):
        self.load, self.workers = load, workers
        self._pool: cf.ProcessPoolExecutor | None = None
        self._generation = 0

    def _executor(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            _preload_for_workers()
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=_mp_context(), initializer=_init_worker)
            self._generation += 1
        return self._pool

    def _drop_pool(self, generation: int) -> None:
        if self._pool is not None and generation == self._generation:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _submit(self, task: _Task) -> tuple[cf.Future, int]:
        try:
            future = self._executor().submit(process_item, self.load, task.index, task.key, task.item)
        except BrokenProcessPool:  # broke since the last result we looked at: start a new one
            self._drop_pool(self._generation)
            future = self._executor().submit(process_item, self.load, task.index, task.key, task.item)
        return future, self._generation

    def _isolated(self, task: _Task) -> Outcome:
        _preload_for_workers()
        with cf.ProcessPoolExecutor(1, mp_context=_mp_context(), initializer=_init_worker) as pool:
            try:
                return pool.submit(process_item, self.load, task.index, task.key, task.item).result()
            except BrokenProcessPool:
                return Outcome(
                    task.index, task.key, task.item, reason="worker_crashed: the worker process died on this item"
                )

    def run(self, tasks: Iterable[_Task]) -> Iterator[Outcome]:
        if self.workers <= 0:
            for task in tasks:
                yield task.ready() if task.ready else process_item(self.load, task.index, task.key, task.item)
            return
        window = self.workers * 4  # enough queued work to keep every worker busy
        pending: collections.deque = collections.deque()
        source = iter(tasks)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < window:
                    task = next(source, None)
                    if task is None:
                        exhausted = True
                    elif task.ready:
                        pending.append((task, None, 0))
                    else:
                        pending.append((task, *self._submit(task)))
                if not pending:
                    return
                task, future, generation = pending.popleft()
                if future is None:
                    yield task.ready()
                    continue
                try:
                    yield future.result()
                except BrokenProcessPool:
                    self._drop_pool(generation)
                    yield self._isolated(task)
                except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
                    yield Outcome(task.index, task.key, task.item, reason=describe_failure(exc))
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None


# ---------------------------------------------------------------------------------------------
# building


@dataclass
class BuildSummary:
    out_dir: str
    items_total: int = 0
    shards_total: int = 0
    shards_selected: int = 0
    shards_skipped: int = 0  # already committed (resume)
    shards_built: int = 0
    items_processed: int = 0
    written: int = 0
    failed: int = 0
    failures: dict = field(default_factory=dict)  # reason kind -> count
    audio_hours: float = 0.0
    wall_seconds: float = 0.0
    stage_seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _ShardPlan:
    shard: int
    tasks: list[_Task]


def _check_picklable(load: Callable, workers: int) -> None:
    if workers <= 0:
        return
    try:
        pickle.dumps(load)
    except Exception as exc:  # noqa: BLE001
        raise TypeError(
            f"load {load!r} cannot be sent to worker processes ({exc}); use a top-level function "
            "or functools.partial of one, or workers=0"
        ) from exc


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc or "shards", unit="clip", disable=not enabled, dynamic_ncols=True, smoothing=0.1)


def _write_shard(out_dir: Path, plan: _ShardPlan, outcomes: Iterator[Outcome], bar, summary: BuildSummary, extra: dict) -> None:
    start = time.perf_counter()
    writer = TarShardWriter(tar_path(out_dir, plan.shard))
    rows, seconds = [], dict.fromkeys(STAGES, 0.0)
    failures: collections.Counter = collections.Counter()
    audio_seconds = 0.0
    try:
        for task in plan.tasks:
            out = next(outcomes)
            assert out.index == task.index, "outcomes out of order"
            for stage, s in out.seconds.items():
                seconds[stage] += s
            if out.status == WRITTEN:
                t0 = time.perf_counter()
                writer.add(out.sample)
                seconds["write"] += time.perf_counter() - t0
                audio_seconds += float(out.meta["duration"])
            else:
                failures[reason_kind(out.reason)] += 1
            rows.append(out.row())
            bar.update(1)
            summary.written += out.status == WRITTEN
            summary.failed += out.status != WRITTEN
            bar.set_postfix(ok=summary.written, failed=summary.failed, refresh=False)
        t0 = time.perf_counter()
        tar_bytes, sha = writer.close()
    except BaseException:
        writer.abort()
        raise
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    _write_atomic(parquet_path(out_dir, plan.shard), buf.getvalue())
    seconds["write"] += time.perf_counter() - t0
    written = sum(r["status"] == WRITTEN for r in rows)
    stats = {
        "format_version": fmt.FORMAT_VERSION,
        "shard": plan.shard,
        "tar": tar_path(out_dir, plan.shard).name,
        "parquet": parquet_path(out_dir, plan.shard).name,
        "first_index": plan.tasks[0].index,
        "end_index": plan.tasks[-1].index + 1,
        "items": len(rows),
        "keys_sha1": keys_digest(plan.tasks),
        "written": written,
        "failed": len(rows) - written,
        "failures": dict(sorted(failures.items())),
        "audio_seconds": round(audio_seconds, 3),
        "tar_bytes": tar_bytes,
        "tar_sha256": sha,
        "stage_seconds": {k: round(v, 4) for k, v in seconds.items()},
        "wall_seconds": round(time.perf_counter() - start, 3),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    _write_json(stats_path(out_dir, plan.shard), stats)  # last: the commit marker
    summary.shards_built += 1
    summary.items_processed += len(rows)
    summary.audio_hours += audio_seconds / 3600
    for kind, n in failures.items():
        summary.failures[kind] = summary.failures.get(kind, 0) + n
    for stage, s in seconds.items():
        summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + s


def _failed_task(index: int, key: str, item: Any, reason: str) -> _Task:
    return _Task(index, key, item, ready=lambda: Outcome(index, key, item, reason=reason))


def keys_digest(tasks: Sequence[_Task]) -> str:
    """Fingerprint of a shard's input keys: a resume must not keep a shard built from other input."""
    return hashlib.sha1("\n".join(t.key for t in tasks).encode()).hexdigest()


def _make_tasks(items: Sequence[Any], key: Callable[[Any], str]) -> list[_Task]:
    """One task per item; bad or duplicate keys become failures here, before any work is done."""
    tasks, seen = [], {}
    for index, item in enumerate(items):
        try:
            k = key(item)
        except Exception as exc:  # noqa: BLE001
            tasks.append(_failed_task(index, f"item{index}", item, f"bad_key: key function failed: {exc}"))
            continue
        if not isinstance(k, str) or not fmt.is_valid_key(k):
            tasks.append(_failed_task(index, f"item{index}", item, f"bad_key: {k!r} must match [A-Za-z0-9_-]+"))
        elif k in seen:
            tasks.append(_failed_task(index, k, item, f"duplicate_key: {k} is also item {seen[k]}"))
        else:
            seen[k] = index
            tasks.append(_Task(index, k, item))
    return tasks


def parse_part(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise ValueError(f"--part must look like I/N (e.g. 0/4), got {text!r}") from exc
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--part {text}: need 0 <= I < N")
    return i, n


def build_shards(
    items: Sequence[Any],
    load: Callable[[Any], Media],
    out_dir: str | os.PathLike,
    *,
    key: Callable[[Any], str],
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 1,
    part: tuple[int, int] = (0, 1),
    desc: str = "",
    progress: bool = True,
) -> BuildSummary:
    """Build (or resume) the shards of ``items`` in ``out_dir``; see the module docstring.

    ``workers=0`` runs in this process (debugging); ``workers>=1`` uses a process pool.
    ``part=(i, n)`` builds only shards whose index % n == i.
    """
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    part_i, part_n = part
    if part_n < 1 or not 0 <= part_i < part_n:
        raise ValueError(f"part {part} must satisfy 0 <= i < n")
    _check_picklable(load, workers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    items = list(items)
    n_shards = math.ceil(len(items) / shard_size)
    summary = BuildSummary(out_dir=str(out), items_total=len(items), shards_total=n_shards)
    header = {
        "items_total": len(items),
        "shard_size": shard_size,
        "shards_total": n_shards,
        "loader": describe_callable(load),
        "key": describe_callable(key),
        "desc": desc,
    }
    tasks = _make_tasks(items, key)
    plans = []
    for shard in range(part_i, n_shards, part_n):
        summary.shards_selected += 1
        shard_tasks = tasks[shard * shard_size : (shard + 1) * shard_size]
        if is_committed(out, shard):
            recorded = read_json(stats_path(out, shard)).get("keys_sha1")
            if recorded != keys_digest(shard_tasks):
                raise ValueError(
                    f"{stats_path(out, shard)} was built from different input items (other metadata, "
                    f"--limit or --shard-size); build into a new --out directory or delete {out} first"
                )
            summary.shards_skipped += 1
            continue
        remove_uncommitted(out, shard)
        plans.append(_ShardPlan(shard, shard_tasks))
    update_dataset_summary(out, header)
    extra = {"shard_size": shard_size}
    _run_plans(
        out, plans, load, workers, desc, progress, summary, extra, on_commit=lambda _: update_dataset_summary(out, header)
    )
    summary.wall_seconds = round(time.perf_counter() - started, 3)
    return summary


def _run_plans(
    out: Path,
    plans: list[_ShardPlan],
    load: Callable,
    workers: int,
    desc: str,
    progress: bool,
    summary: BuildSummary,
    extra: dict,
    on_commit: Callable[[int], None],
) -> None:
    """Run every plan's tasks through one pool and write each shard once its items are done."""
    total = sum(len(p.tasks) for p in plans)
    outcomes = _OrderedRunner(load, workers).run(task for plan in plans for task in plan.tasks)
    with _progress(total, desc, progress) as bar:
        try:
            for plan in plans:
                _write_shard(out, plan, outcomes, bar, summary, extra)
                on_commit(plan.shard)
        finally:
            outcomes.close()  # shuts the pool down, also on Ctrl-C or an error


# ---------------------------------------------------------------------------------------------
# retry


def read_rows(path: str | os.PathLike) -> list[dict]:
    return pq.read_table(path, schema=ROW_SCHEMA).to_pylist()


def retry_failed(
    out_dir: str | os.PathLike,
    *,
    kinds: Sequence[str] | None = None,
    workers: int = 1,
    progress: bool = True,
    load: Callable[[Any], Media] | None = None,
) -> BuildSummary:
    """Re-run the failed rows of every committed shard (only ``kinds`` if given) and rewrite the
    shards they belong to. Kept samples are copied from the old tar; the shard's item range and
    sample order do not change. ``load`` defaults to the loader recorded in dataset.json."""
    out = Path(out_dir)
    header = read_json(out / DATASET_FILE) if (out / DATASET_FILE).exists() else {}
    if load is None:
        if not header.get("loader"):
            raise ValueError(
                f"{out / DATASET_FILE} records no re-creatable loader; rerun the original `prep shards` command instead"
            )
        load = resolve_callable(header["loader"])
    _check_picklable(load, workers)
    started = time.perf_counter()
    summary = BuildSummary(out_dir=str(out), items_total=header.get("items_total", 0))
    plans = []
    for stats_file in sorted(out.glob("*_stats.json")):
        shard = int(stats_file.name.split("_")[0])
        summary.shards_selected += 1
        if not tar_path(out, shard).exists():
            continue
        rows = read_rows(parquet_path(out, shard))
        retry = {
            r["index"]
            for r in rows
            if r["status"] == FAILED
            and r["reason_kind"] not in ("duplicate_key", "bad_key")
            and (not kinds or r["reason_kind"] in kinds)
        }
        if not retry:
            summary.shards_skipped += 1
            continue
        plans.append(_retry_plan(out, shard, rows, retry))
    extra = {"retried": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if "shard_size" in header:
        extra["shard_size"] = header["shard_size"]
    _run_retry(out, plans, load, workers, progress, summary, extra)
    summary.wall_seconds = round(time.perf_counter() - started, 3)
    return summary


def _retry_plan(out: Path, shard: int, rows: list[dict], retry: set[int]) -> _ShardPlan:
    old_samples = iter_tar_samples(tar_path(out, shard))

    def kept(row: dict) -> Callable[[], Outcome]:
        def outcome() -> Outcome:
            item = json.loads(row["item"])
            if row["status"] == FAILED:
                return Outcome(row["index"], row["key"], item, reason=row["reason"])
            for sample in old_samples:  # both tars follow input order: one streaming pass
                if sample["__key__"] == row["key"]:
                    return Outcome(row["index"], row["key"], item, WRITTEN, sample=sample, meta=json.loads(row["meta"]))
            raise RuntimeError(f"{tar_path(out, shard)} lacks sample {row['key']} that its parquet lists")

        return outcome

    tasks = [
        _Task(r["index"], r["key"], json.loads(r["item"])) if r["index"] in retry else _Task(r["index"], r["key"], None, ready=kept(r))
        for r in sorted(rows, key=lambda r: r["index"])
    ]
    return _ShardPlan(shard, tasks)


def _run_retry(out: Path, plans, load, workers, progress, summary, extra) -> None:
    # New tar and parquet are first written to a staging directory. Only then is the stats file
    # (the commit marker) removed, the new files renamed over the old, and stats moved in last:
    # an interruption leaves either the old committed shard or an uncommitted one that the
    # original build command rebuilds.
    staging = out / ".retry"
    staging.mkdir(exist_ok=True)

    def swap_in(shard: int) -> None:
        stats_path(out, shard).unlink()
        os.replace(tar_path(staging, shard), tar_path(out, shard))
        os.replace(parquet_path(staging, shard), parquet_path(out, shard))
        os.replace(stats_path(staging, shard), stats_path(out, shard))
        update_dataset_summary(out)

    try:
        _run_plans(staging, plans, load, workers, "retry", progress, summary, extra, on_commit=swap_in)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()


# ---------------------------------------------------------------------------------------------
# dataset summary


def read_json(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


_STATS_CACHE: dict[str, tuple[tuple[int, int], dict]] = {}


def _read_stats(path: Path) -> dict:
    # The summary is rewritten after every shard; re-parsing thousands of unchanged stats files
    # each time would make a long build quadratic.
    st = path.stat()
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _STATS_CACHE.get(str(path))
    if cached is None or cached[0] != stamp:
        cached = (stamp, read_json(path))
        _STATS_CACHE[str(path)] = cached
    return cached[1]


def update_dataset_summary(out_dir: str | os.PathLike, header: dict | None = None) -> dict:
    """Rewrite dataset.json from the committed shards' stats files (cheap: one small file each).

    Several ``--part`` runs may share ``out_dir``; each rewrite rescans every stats file and
    replaces the file atomically, so the last writer leaves a complete picture.
    """
    out = Path(out_dir)
    path = out / DATASET_FILE
    previous = read_json(path) if path.exists() else {}
    summary = {k: previous[k] for k in ("items_total", "shard_size", "shards_total", "loader", "key", "desc") if k in previous}
    summary.update({k: v for k, v in (header or {}).items() if v is not None})
    shards, failures = [], collections.Counter()
    for stats_file in sorted(out.glob("*_stats.json")):
        try:
            stats = _read_stats(stats_file)
        except (OSError, ValueError):
            continue  # being replaced by a concurrent part right now; the next rewrite sees it
        shards.append(
            {
                "shard": stats["shard"],
                "tar": stats["tar"],
                "written": stats["written"],
                "failed": stats["failed"],
                "audio_hours": round(stats["audio_seconds"] / 3600, 4),
            }
        )
        failures.update(stats.get("failures", {}))
    written = sum(s["written"] for s in shards)
    failed = sum(s["failed"] for s in shards)
    summary.update(
        {
            "format_version": fmt.FORMAT_VERSION,
            "shards_committed": len(shards),
            "written": written,
            "failed": failed,
            "audio_hours": round(sum(s["audio_hours"] for s in shards), 4),
            "failures": dict(failures.most_common()),
            "shards": shards,
            "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    _write_json(path, summary)
    return summary
