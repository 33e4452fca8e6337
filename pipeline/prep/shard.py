"""One shard from plan to commit marker, the same on either engine (``local_engine``,
``ray_engine``): the shard's plan (``ShardPlan``), what every shard of a run shares (``ShardRun``:
the output directory, the loader, the marker's extra fields, the bar, the summary and the commit
hook), the per-shard writer (``write_shard``: the plan's outcomes -> temp tar -> rename ->
parquet -> stats marker last) and one whole shard in one process (``build_one_shard``).

An output in an object store (``s3://``) is written the same way in a folder of this process's
local temporary directory (``TMPDIR``: on a cluster, each node's own disk), then uploaded by the
commit rule (``shard_dir.publish_shard``): no node needs a shared filesystem.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import hashlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline import format as fmt
from pipeline import shard_dir, storage
from pipeline.atomic import write_json
from pipeline.prep.manifest import write_rows
from pipeline.prep.media import reason_kind
from pipeline.prep.pool import OrderedRunner, Task
from pipeline.prep.worker import STAGES, WRITTEN, Outcome
from pipeline.prep.writer import TarShardWriter
from pipeline.progress import progress_bar


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


@dataclass
class ShardRun:
    """What every shard of one build (or retry) shares, whichever engine writes it."""

    out: Path | storage.S3Path
    load: Callable
    summary: BuildSummary
    extra: dict = field(default_factory=dict)  # fields added to every commit marker
    on_commit: Callable[[int], None] = lambda shard: None  # after each shard's marker is written
    desc: str = ""  # the progress bar's label
    progress: bool = True

    def committed(self, shard: int, stats: dict) -> None:
        """Add a committed shard's marker to the summary, then run the commit hook."""
        summary = self.summary
        summary.shards_built += 1
        summary.items_processed += stats["items"]
        summary.written += stats["written"]
        summary.failed += stats["failed"]
        summary.audio_hours += stats["audio_seconds"] / 3600
        for kind, n in stats["failures"].items():
            summary.failures[kind] = summary.failures.get(kind, 0) + n
        for stage, s in stats["stage_seconds"].items():
            summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + s
        self.on_commit(shard)


class Progress:
    """The build's one progress bar: clips done and their rate, written, and failed by reason.
    The local engine counts each outcome; the Ray engine sets the cluster-wide totals."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = progress_bar(total, desc or "shards", enabled, unit="clip", smoothing=0.1)
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
        self.bar.set_postfix_str(
            f"ok={self.written} failed={sum(self.failures.values())}" + (f" ({top})" if top else ""), refresh=False
        )

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def write_shard(
    out_dir: Path, plan: ShardPlan, outcomes: Iterator[Outcome], extra: dict, on_item: Callable[[Outcome], None]
) -> dict:
    """The per-shard writer both engines run: the plan's outcomes (in order) -> tar, manifest and,
    last, the commit marker. Returns the marker's contents; a failed write (OSError) leaves
    nothing of the shard behind. ``out_dir`` in a store: written locally, then uploaded."""
    if isinstance(out := storage.as_location(out_dir), storage.S3Path):
        return _write_remote_shard(out, plan, outcomes, extra, on_item)
    try:
        return _write_shard(out_dir, plan, outcomes, extra, on_item)
    except OSError:
        shard_dir.remove_uncommitted(out_dir, plan.shard)
        raise


def _write_remote_shard(
    out: storage.S3Path, plan: ShardPlan, outcomes: Iterator[Outcome], extra: dict, on_item: Callable[[Outcome], None]
) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"prep-{shard_dir.shard_stem(plan.shard)}-") as tmp:
        stats = _write_shard(Path(tmp), plan, outcomes, extra, on_item)
        try:
            shard_dir.publish_shard(Path(tmp), plan.shard, out)
        except BaseException:
            with contextlib.suppress(Exception):  # the error that stopped the upload is the one to see
                shard_dir.remove_uncommitted(out, plan.shard)
            raise
    return stats


def _write_shard(
    out_dir: Path, plan: ShardPlan, outcomes: Iterator[Outcome], extra: dict, on_item: Callable[[Outcome], None]
) -> dict:
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


def build_one_shard(
    out_dir: Path, plan: ShardPlan, load: Callable, extra: dict, on_item=None, isolate: bool = False
) -> dict:
    """One whole shard in this process (a pool worker or a Ray task): its items run here (with
    ``isolate``, each in a child process, so an item that kills its process is only a failed
    row), written by ``write_shard``. Returns the commit marker's contents."""
    outcomes = OrderedRunner(load, 1 if isolate else 0).run(plan.tasks)
    try:
        return write_shard(out_dir, plan, outcomes, extra, on_item or (lambda _: None))
    finally:
        outcomes.close()


def keys_digest(tasks: Sequence[Task]) -> str:
    """Fingerprint of a shard's input keys: a resume must not keep a shard built from other input."""
    return hashlib.sha1("\n".join(t.key for t in tasks).encode()).hexdigest()
