"""Building (or resuming) a shard directory: input items -> tasks with keys -> an engine (this
machine's process pool, or Ray: ``pipeline.prep.ray_engine``) -> one tar, manifest and commit
marker per shard (``write_shard``, the same writer on either engine), under the build lock.
With two or more workers and at least two shards for each, every worker builds whole shards
(as a Ray task does); otherwise items stream through the pool and this process writes.

A corpus reader supplies an ordered list of JSON-serializable *items*, a picklable
``load(item) -> Media`` and ``key(item) -> str``. Shard ``i`` always holds input items
``[i*shard_size, (i+1)*shard_size)``, so resuming, ``--part I/N`` and ``prep retry`` are
deterministic. File names and the commit rule are ``pipeline.shard_dir``'s.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import functools
import datetime as dt
import hashlib
import math
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import format as fmt
from pipeline import shard_dir
from pipeline.prep import loaders
from pipeline.prep.manifest import update_dataset_summary, write_rows
from pipeline.prep.media import Media, reason_kind
from pipeline.prep.pool import OrderedRunner, Task, new_pool
from pipeline.prep.worker import STAGES, WRITTEN, Outcome
from pipeline.prep.writer import TarShardWriter, write_json

if TYPE_CHECKING:
    from pipeline.prep.ray_engine import RayOptions

DEFAULT_SHARD_SIZE = 1000


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
class ShardPlan:
    shard: int
    tasks: list[Task]


def check_picklable(load: Callable, workers: int) -> None:
    if workers <= 0:
        return
    try:
        pickle.dumps(load)
    except Exception as exc:  # noqa: BLE001
        raise TypeError(
            f"load {load!r} cannot be sent to worker processes ({exc}); use a top-level function "
            "or functools.partial of one, or workers=0"
        ) from exc


class Progress:
    """The build's one progress bar: clips done and their rate, written, and failed by reason.
    The local engine counts each outcome; the Ray engine sets the cluster-wide totals."""

    def __init__(self, total: int, desc: str, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc or "shards", unit="clip", disable=not enabled, dynamic_ncols=True, smoothing=0.1)
        self.written, self.failures = 0, collections.Counter()

    def item(self, out: Outcome) -> None:
        if out.status == WRITTEN:
            self.written += 1
        else:
            self.failures[reason_kind(out.reason)] += 1
        self.bar.update(1)
        self._postfix()

    def shard(self, stats: dict) -> None:
        """A shard built elsewhere in one piece (a worker building whole shards)."""
        self.written += stats["written"]
        self.failures.update(stats["failures"])
        self._postfix()
        self.bar.update(stats["items"])

    def set(self, done: int, written: int, failures: dict) -> None:
        self.written, self.failures = written, collections.Counter(failures)
        self._postfix()
        self.bar.update(done - self.bar.n)

    def _postfix(self) -> None:
        top = ", ".join(f"{k} {n}" for k, n in self.failures.most_common(3))
        self.bar.set_postfix_str(f"ok={self.written} failed={sum(self.failures.values())}" + (f" ({top})" if top else ""), refresh=False)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def write_shard(out_dir: Path, plan: ShardPlan, outcomes: Iterator[Outcome], extra: dict, on_item: Callable[[Outcome], None]) -> dict:
    """The per-shard writer both engines run: the plan's outcomes (in order) -> tar, manifest and,
    last, the commit marker. Returns the marker's contents; a failed write (OSError) leaves
    nothing of the shard behind."""
    try:
        return _write_shard(out_dir, plan, outcomes, extra, on_item)
    except OSError:
        shard_dir.remove_uncommitted(out_dir, plan.shard)
        raise


def _write_shard(out_dir: Path, plan: ShardPlan, outcomes: Iterator[Outcome], extra: dict, on_item: Callable[[Outcome], None]) -> dict:
    start = time.perf_counter()
    writer = TarShardWriter(shard_dir.tar_path(out_dir, plan.shard))
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
            on_item(out)
        t0 = time.perf_counter()
        tar_bytes, sha = writer.close()
    except BaseException:
        writer.abort()
        raise
    write_rows(shard_dir.parquet_path(out_dir, plan.shard), rows)
    seconds["write"] += time.perf_counter() - t0
    written = sum(r["status"] == WRITTEN for r in rows)
    stats = {
        "format_version": fmt.FORMAT_VERSION,
        "shard": plan.shard,
        "tar": shard_dir.tar_path(out_dir, plan.shard).name,
        "parquet": shard_dir.parquet_path(out_dir, plan.shard).name,
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
    write_json(shard_dir.stats_path(out_dir, plan.shard), stats)  # last: the commit marker
    return stats


def record_shard(summary: BuildSummary, stats: dict) -> None:
    """Add one committed shard's marker to the run's summary."""
    summary.shards_built += 1
    summary.items_processed += stats["items"]
    summary.written += stats["written"]
    summary.failed += stats["failed"]
    summary.audio_hours += stats["audio_seconds"] / 3600
    for kind, n in stats["failures"].items():
        summary.failures[kind] = summary.failures.get(kind, 0) + n
    for stage, s in stats["stage_seconds"].items():
        summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + s


def build_one_shard(out_dir: Path, plan: ShardPlan, load: Callable, extra: dict, on_item=None, isolate: bool = False) -> dict:
    """One whole shard in this process (a pool worker or a Ray task): its items run here (with
    ``isolate``, each in a child process, so an item that kills its process is only a failed
    row), written by ``write_shard``. Returns the commit marker's contents."""
    outcomes = OrderedRunner(load, 1 if isolate else 0).run(plan.tasks)
    try:
        return write_shard(out_dir, plan, outcomes, extra, on_item or (lambda _: None))
    finally:
        outcomes.close()


def _failed_task(index: int, key: str, item: Any, reason: str) -> Task:
    # A partial, not a lambda: plans travel to the workers that build whole shards.
    return Task(index, key, item, ready=functools.partial(Outcome, index, key, item, reason=reason))


def keys_digest(tasks: Sequence[Task]) -> str:
    """Fingerprint of a shard's input keys: a resume must not keep a shard built from other input."""
    return hashlib.sha1("\n".join(t.key for t in tasks).encode()).hexdigest()


def make_tasks(items: Sequence[Any], key: Callable[[Any], str]) -> list[Task]:
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
            tasks.append(Task(index, k, item))
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
    input_warnings: dict | None = None,
    ray: RayOptions | None = None,
) -> BuildSummary:
    """Build (or resume) the shards of ``items`` in ``out_dir``; see the module docstring.

    ``workers=0`` runs in this process (debugging); ``workers>=1`` uses a process pool; ``ray``
    runs each shard as a Ray task instead (``workers`` is then unused).
    ``part=(i, n)`` builds only shards whose index % n == i. Raises ShardDirError (a ValueError)
    when another run holds these shards or the output cannot be written.
    """
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    part_i, part_n = part
    if part_n < 1 or not 0 <= part_i < part_n:
        raise ValueError(f"part {part} must satisfy 0 <= i < n")
    check_picklable(load, 1 if ray else workers)
    out = Path(out_dir)
    started, started_at = time.perf_counter(), time.time()
    items = list(items)
    n_shards = math.ceil(len(items) / shard_size)
    selected = range(part_i, n_shards, part_n)
    summary = BuildSummary(out_dir=str(out), items_total=len(items), shards_total=n_shards, shards_selected=len(selected))
    header = {
        "items_total": len(items),
        "shard_size": shard_size,
        "shards_total": n_shards,
        "loader": loaders.describe_loader(load),
        "key": loaders.describe_key(key),
        "desc": desc,
        "input_warnings": input_warnings or {},  # e.g. AudioSet MIDs its labels CSV lacks
    }
    tasks = make_tasks(items, key)
    with output_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        with shard_dir.build_lock(out, selected):
            shard_dir.remove_dead_temp_files(out, started_at)
            plans = []
            for shard in selected:
                shard_tasks = tasks[shard * shard_size : (shard + 1) * shard_size]
                if shard_dir.is_committed(out, shard):
                    _check_same_input(out, shard, shard_tasks)
                    summary.shards_skipped += 1
                    continue
                shard_dir.remove_uncommitted(out, shard)
                plans.append(ShardPlan(shard, shard_tasks))
            update_dataset_summary(out, header)
            extra = {"shard_size": shard_size}
            run_plans(
                out, plans, load, workers, desc, progress, summary, extra,
                on_commit=lambda _: update_dataset_summary(out, header), ray=ray,
            )
    summary.wall_seconds = round(time.perf_counter() - started, 3)
    return summary


def _check_same_input(out: Path, shard: int, tasks: list[Task]) -> None:
    marker = shard_dir.stats_path(out, shard)
    if shard_dir.read_stats(marker).get("keys_sha1") != keys_digest(tasks):
        raise ValueError(
            f"{marker} was built from different input items (other metadata, "
            f"--limit or --shard-size); build into a new --out directory or delete {out} first"
        )


def run_plans(
    out: Path,
    plans: list[ShardPlan],
    load: Callable,
    workers: int,
    desc: str,
    progress: bool,
    summary: BuildSummary,
    extra: dict,
    on_commit: Callable[[int], None],
    ray: RayOptions | None = None,
) -> None:
    """Run every plan's tasks and write each shard once its items are done: on this machine's
    process pool, or as one Ray task per shard when ``ray`` is given (``pipeline.prep.ray_engine``).
    If writing fails, the shard being written is removed whole before the error propagates."""
    if ray is not None:
        from pipeline.prep import ray_engine

        ray_engine.run_plans(out, plans, load, ray, desc, progress, summary, extra, on_commit)
        return
    with Progress(sum(len(p.tasks) for p in plans), desc, progress) as bar:
        if workers >= 2 and len(plans) >= 2 * workers:
            plans = _whole_shards_in_workers(out, plans, load, workers, bar, summary, extra, on_commit)
        _items_in_workers(out, plans, load, workers, bar, summary, extra, on_commit)


def _whole_shards_in_workers(out, plans, load, workers, bar: Progress, summary, extra, on_commit) -> list[ShardPlan]:
    """Each worker builds whole shards, so the driver's share of the CPU (tar, manifest, taking
    in results) moves to the workers: with one process per core, it would otherwise take a
    sixth of one. Returns the plans left unbuilt when a worker died: the caller runs those item
    by item, which finds the item that kills its process."""
    left = {plan.shard: plan for plan in plans}
    pool = new_pool(workers)
    try:
        futures = {pool.submit(build_one_shard, out, plan, load, extra): plan for plan in plans}
        for future in cf.as_completed(futures):
            try:
                stats = future.result()
            except BrokenProcessPool:
                break
            plan = left.pop(futures[future].shard)
            bar.shard(stats)
            record_shard(summary, stats)
            on_commit(plan.shard)
    except BaseException:
        # Ctrl-C or an error: stop now rather than after every shard in flight (minutes when
        # downloading); what they leave is uncommitted, and a rerun removes it.
        for process in list(pool._processes.values()):
            process.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for shard in left:
        shard_dir.remove_uncommitted(out, shard)
    return list(left.values())


def _items_in_workers(out, plans, load, workers, bar: Progress, summary, extra, on_commit) -> None:
    """Items stream through the pool in input order and the driver writes each shard."""
    outcomes = OrderedRunner(load, workers).run(task for plan in plans for task in plan.tasks)
    try:
        for plan in plans:
            stats = write_shard(out, plan, outcomes, extra, on_item=bar.item)
            record_shard(summary, stats)
            on_commit(plan.shard)
    finally:
        outcomes.close()  # shuts the pool down, also on Ctrl-C or an error


@contextlib.contextmanager
def output_errors(out: Path) -> Iterator[None]:
    """An OSError on the output (disk full, file-size limit, a read-only or vanished directory)
    -> one ShardDirError naming ``out`` and what to do; nothing partial is left behind."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise shard_dir.ShardDirError(
            f"cannot write the shards in {out}: {exc.strerror or exc}{where}; free space (or raise the "
            "file-size limit) and rerun the same command: it resumes"
        ) from None
