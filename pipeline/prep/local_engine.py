"""Where items run with ``--engine local``: this machine's process pool (``pipeline.prep.pool``).

With two or more workers and at least two shards for each, every worker builds whole shards (as
a Ray task does), so the driver's share of the CPU moves to the workers; otherwise items stream
through the pool in input order and this process writes each shard. Either way a shard is
written by ``shard.write_shard``.
"""

from __future__ import annotations

import concurrent.futures as cf
from concurrent.futures.process import BrokenProcessPool

from pipeline import shard_dir
from pipeline.prep.pool import OrderedRunner, new_pool
from pipeline.prep.shard import Progress, ShardPlan, ShardRun, build_one_shard, write_shard


def run_plans(run: ShardRun, plans: list[ShardPlan], workers: int) -> None:
    """Build every plan's shard with ``workers`` processes (0: in this process)."""
    with Progress(sum(len(p.tasks) for p in plans), run.desc, run.progress) as bar:
        if workers >= 2 and len(plans) >= 2 * workers:
            plans = _whole_shards_in_workers(run, plans, workers, bar)
        _items_in_workers(run, plans, workers, bar)


def _whole_shards_in_workers(run: ShardRun, plans: list[ShardPlan], workers: int, bar: Progress) -> list[ShardPlan]:
    """Each worker builds whole shards, so the driver's share of the CPU (tar, manifest, taking
    in results) moves to the workers: with one process per core, it would otherwise take a
    sixth of one. Returns the plans left unbuilt when a worker died: the caller runs those item
    by item, which finds the item that kills its process."""
    left = {plan.shard: plan for plan in plans}
    pool = new_pool(workers)
    try:
        futures = {pool.submit(build_one_shard, run.out, plan, run.load, run.extra): plan for plan in plans}
        for future in cf.as_completed(futures):
            try:
                stats = future.result()
            except BrokenProcessPool:
                break
            plan = left.pop(futures[future].shard)
            bar.shard(stats)
            run.committed(plan.shard, stats)
    except BaseException:
        # Ctrl-C or an error: stop now rather than after every shard in flight (minutes when
        # downloading); what they leave is uncommitted, and a rerun removes it.
        pool.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for shard in left:
        shard_dir.remove_uncommitted(run.out, shard)
    return list(left.values())


def _items_in_workers(run: ShardRun, plans: list[ShardPlan], workers: int, bar: Progress) -> None:
    """Items stream through the pool in input order and the driver writes each shard."""
    outcomes = OrderedRunner(run.load, workers).run(task for plan in plans for task in plan.tasks)
    try:
        for plan in plans:
            stats = write_shard(run.out, plan, outcomes, run.extra, on_item=bar.item)
            run.committed(plan.shard, stats)
    finally:
        outcomes.close()  # shuts the pool down, also on Ctrl-C or an error
