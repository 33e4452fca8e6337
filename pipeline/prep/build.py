"""Building (or resuming) a shard directory: input items -> tasks with keys -> the shard plan ->
an engine (this machine's process pool, ``pipeline.prep.local_engine``, or Ray,
``pipeline.prep.ray_engine``) -> one tar, manifest and commit marker per shard
(``pipeline.prep.shard``, the same writer on either engine), under the build lock.

A corpus reader supplies an ordered list of JSON-serializable *items*, a picklable
``load(item) -> Media`` and ``key(item) -> str``. Shard ``i`` always holds input items
``[i*shard_size, (i+1)*shard_size)``, so resuming, ``--part I/N`` and ``prep retry`` are
deterministic. File names and the commit rule are ``pipeline.shard_dir``'s. ``dataset.json``
records the loader and key function by the names their reader gave them
(``pipeline.prep.media.describe_loader``); this module knows no reader.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline import format as fmt
from pipeline import shard_dir, storage
from pipeline.prep import local_engine, ray_engine
from pipeline.prep.manifest import update_dataset_summary
from pipeline.prep.media import Media, describe_key, describe_loader
from pipeline.prep.pool import Task
from pipeline.prep.ray_engine import RayOptions
from pipeline.prep.shard import BuildSummary, ShardPlan, ShardRun, keys_digest
from pipeline.prep.worker import Outcome

DEFAULT_SHARD_SIZE = 1000


def check_picklable(load: Callable, workers: int) -> None:
    if workers <= 0:
        return
    try:
        pickle.dumps(load)
    except Exception as exc:
        raise TypeError(
            f"load {load!r} cannot be sent to worker processes ({exc}); use a top-level function "
            "or functools.partial of one, or workers=0"
        ) from exc


def _failed_task(index: int, key: str, item: Any, reason: str) -> Task:
    # A partial, not a lambda: plans travel to the workers that build whole shards.
    return Task(index, key, item, ready=functools.partial(Outcome, index, key, item, reason=reason))


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
    out = storage.location(out_dir)  # a Path, or an S3Path (s3://bucket/prefix): never a local "s3:" folder
    started, started_at = time.perf_counter(), time.time()
    items = list(items)
    n_shards = math.ceil(len(items) / shard_size)
    selected = range(part_i, n_shards, part_n)
    summary = BuildSummary(
        out_dir=str(out), items_total=len(items), shards_total=n_shards, shards_selected=len(selected)
    )
    header = {
        "items_total": len(items),
        "shard_size": shard_size,
        "shards_total": n_shards,
        "loader": describe_loader(load),
        "key": describe_key(key),
        "desc": desc,
        "input_warnings": input_warnings or {},  # e.g. AudioSet MIDs its labels CSV lacks
    }
    tasks = make_tasks(items, key)
    with output_errors(out):
        if isinstance(out, Path):
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
            run = ShardRun(
                out,
                load,
                summary,
                extra={"shard_size": shard_size},
                on_commit=lambda _: update_dataset_summary(out, header),
                desc=desc,
                progress=progress,
            )
            run_plans(run, plans, workers, ray)
    summary.wall_seconds = round(time.perf_counter() - started, 3)
    return summary


def _check_same_input(out: Path | storage.S3Path, shard: int, tasks: list[Task]) -> None:
    marker = shard_dir.stats_path(out, shard)
    if shard_dir.read_stats(marker).get("keys_sha1") != keys_digest(tasks):
        raise ValueError(
            f"{marker} was built from different input items (other metadata, "
            f"--limit or --shard-size); build into a new --out directory or delete {out} first"
        )


def run_plans(run: ShardRun, plans: list[ShardPlan], workers: int, ray: RayOptions | None = None) -> None:
    """Run every plan's tasks and write each shard once its items are done: on this machine's
    process pool, or as one Ray task per shard when ``ray`` is given. If writing fails, the shard
    being written is removed whole before the error propagates."""
    if ray is not None:
        ray_engine.run_plans(run, plans, ray)
    else:
        local_engine.run_plans(run, plans, workers)


@contextlib.contextmanager
def output_errors(out: Path | storage.S3Path) -> Iterator[None]:
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
