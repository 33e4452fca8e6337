"""``prep retry``: re-run the failed rows of a committed shard directory and rewrite only the
shards they belong to, swapped in under the commit marker so an interruption leaves either the
old shard or an uncommitted one."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import atomic, shard_dir, storage
from pipeline.prep import loaders
from pipeline.prep.build import check_picklable, output_errors, run_plans
from pipeline.prep.manifest import read_header, read_rows, update_dataset_summary
from pipeline.prep.media import Media
from pipeline.prep.pool import Task
from pipeline.prep.ray_engine import RayOptions
from pipeline.prep.shard import BuildSummary, ShardPlan, ShardRun
from pipeline.prep.worker import FAILED, WRITTEN, Outcome

_NOT_RETRIED = ("duplicate_key", "bad_key")  # the same input gives the same key: retrying cannot help


def retry_failed(
    out_dir: str | os.PathLike,
    *,
    kinds: Sequence[str] | None = None,
    workers: int = 1,
    progress: bool = True,
    load: Callable[[Any], Media] | None = None,
    ray: RayOptions | None = None,
) -> BuildSummary:
    """Re-run the failed rows of every committed shard (only ``kinds`` if given) and rewrite the
    shards they belong to. Kept samples are copied from the old tar; the shard's item range and
    sample order do not change. ``load`` defaults to the registered loader dataset.json names;
    ``ray`` runs the shards on Ray as ``build_shards`` does. ``out_dir`` may be in a store
    (``s3://``): the new shards are staged under its ``.retry/`` prefix and copied in server-side."""
    out = storage.location(out_dir)
    header = read_header(out)
    if load is None:
        if not header.get("loader"):
            raise ValueError(
                f"{out / shard_dir.DATASET_FILE} records no re-creatable loader; "
                "rerun the original `prep shards` command instead"
            )
        load = loaders.resolve_loader(header["loader"], out / shard_dir.DATASET_FILE)
    check_picklable(load, 1 if ray else workers)
    started, started_at = time.perf_counter(), time.time()
    summary = BuildSummary(out_dir=str(out), items_total=header.get("items_total", 0))
    extra = {"retried": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if "shard_size" in header:
        extra["shard_size"] = header["shard_size"]
    with output_errors(out), shard_dir.build_lock(out, None):
        shard_dir.remove_dead_temp_files(out, started_at)
        plans = []
        for committed in shard_dir.committed_shards(out):
            summary.shards_selected += 1
            rows = read_rows(shard_dir.parquet_path(out, committed.index))
            retry = {
                r["index"]
                for r in rows
                if r["status"] == FAILED
                and r["reason_kind"] not in _NOT_RETRIED
                and (not kinds or r["reason_kind"] in kinds)
            }
            if not retry:
                summary.shards_skipped += 1
                continue
            plans.append(_retry_plan(out, committed.index, rows, retry))
        run = ShardRun(out, load, summary, extra, desc="retry", progress=progress)
        _run_retry(run, plans, workers, ray)
    summary.wall_seconds = round(time.perf_counter() - started, 3)
    return summary


class _OldSamples:
    """The old tar's samples in one streaming pass (both tars follow input order). Picklable
    before its first use, so a retry plan can travel to a worker or a Ray task and read the tar
    there."""

    def __init__(self, path: Path):
        self.path, self._iter = path, None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_iter": None}

    def find(self, key: str) -> dict:
        if self._iter is None:
            self._iter = shard_dir.iter_tar_samples(self.path)
        for sample in self._iter:
            if sample["__key__"] == key:
                return sample
        raise RuntimeError(f"{self.path} lacks sample {key} that its parquet lists")


@dataclass
class _Kept:
    """A row the retry keeps: its old failure, or its sample from the old tar."""

    row: dict
    old_samples: _OldSamples

    def __call__(self) -> Outcome:
        row = self.row
        item = json.loads(row["item"])
        if row["status"] == FAILED:
            return Outcome(row["index"], row["key"], item, reason=row["reason"])
        return Outcome(
            row["index"],
            row["key"],
            item,
            WRITTEN,
            sample=self.old_samples.find(row["key"]),
            meta=json.loads(row["meta"]),
        )


def _retry_plan(out: Path | storage.S3Path, shard: int, rows: list[dict], retry: set[int]) -> ShardPlan:
    old_samples = _OldSamples(shard_dir.tar_path(out, shard))
    tasks = [
        Task(r["index"], r["key"], json.loads(r["item"]))
        if r["index"] in retry
        else Task(r["index"], r["key"], None, ready=_Kept(r, old_samples))
        for r in sorted(rows, key=lambda r: r["index"])
    ]
    return ShardPlan(shard, tasks)


def _run_retry(run: ShardRun, plans: list[ShardPlan], workers: int, ray: RayOptions | None) -> None:
    # New tar and parquet are first written to a staging directory. Only then is the stats file
    # (the commit marker) removed, the new files renamed over the old, and stats moved in last:
    # an interruption leaves either the old committed shard or an uncommitted one that the
    # original build command rebuilds.
    out = run.out
    staging = out / ".retry"
    if isinstance(out, storage.S3Path):
        _run_remote_retry(run, plans, workers, ray, staging)
        return
    staging.mkdir(exist_ok=True)

    def swap_in(shard: int) -> None:
        atomic.remove(shard_dir.stats_path(out, shard))
        for path in (shard_dir.tar_path, shard_dir.parquet_path, shard_dir.stats_path):
            atomic.replace(path(staging, shard), path(out, shard))
        update_dataset_summary(out)

    try:
        run_plans(dataclasses.replace(run, out=staging, on_commit=swap_in), plans, workers, ray)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()


def _run_remote_retry(
    run: ShardRun, plans: list[ShardPlan], workers: int, ray: RayOptions | None, staging: storage.S3Path
) -> None:
    # The same order in a store: each shard is committed under the staging prefix (written in a
    # local temporary folder and uploaded, on any node), then shard_dir.move_shard swaps it in.
    out = run.out

    def swap_in(shard: int) -> None:
        shard_dir.move_shard(staging, shard, out)
        update_dataset_summary(out)

    try:
        run_plans(dataclasses.replace(run, out=staging, on_commit=swap_in), plans, workers, ray)
    finally:
        for name in storage.list_dir(staging):
            storage.remove(staging / name)
