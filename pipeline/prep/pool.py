"""The project's process pools: ``new_pool`` (workers that never outlive their driver and that
``WorkerPool.kill`` ends at once), and ``OrderedRunner``, which runs items in such a pool, yields
their outcomes in input order and survives workers that die on an item. ``new_pool`` is also the
pool whose workers build whole shards (``local_engine``) and render the generated world's test
sets (``synthetic.writers``)."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from pipeline.lifetime import die_with_parent
from pipeline.prep.worker import Outcome, describe_failure, process_item


@dataclass
class Task:
    index: int
    key: str
    item: Any
    ready: Callable[[], Outcome] | None = None  # precomputed outcome (bad key, kept sample)


def _init_worker(parent: int) -> None:
    die_with_parent(parent)
    # Ctrl-C goes to the parent, which shuts the pool down; workers finishing their item is fine.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One worker per core: intra-op threads would only oversubscribe the CPUs. This also keeps a
    # forked worker out of the OpenMP thread pool it inherited (dead) from a parent that already
    # ran torch ops, which would hang.
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


class WorkerPool(cf.ProcessPoolExecutor):
    """A process pool whose workers die with their driver and that ``kill`` ends at once. The
    executor keeps its worker processes private (up to Python 3.13), so this pool starts them
    through a multiprocessing context of its own that remembers each one."""

    def __init__(self, workers: int):
        # fork: workers inherit the imported modules (no per-worker import of torch/pyarrow) and
        # any index a reader built before the pool started. The parent-death signal fires when
        # the creating thread ends: pools are created and shut down by the thread that uses them.
        methods = multiprocessing.get_all_start_methods()
        base = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self._started: list = []
        context = type(base)()

        def remembered_process(*args, **kwargs):
            process = base.Process(*args, **kwargs)
            self._started.append(process)
            return process

        context.Process = remembered_process
        super().__init__(workers, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),))

    def kill(self) -> None:
        """SIGKILL every worker still running: for Ctrl-C or an error, when waiting for the work in
        flight (minutes of downloads) would be wrong. Call ``shutdown`` after it."""
        for process in self._started:
            if process.is_alive():
                process.kill()


def new_pool(workers: int) -> WorkerPool:
    _preload_for_workers()
    return WorkerPool(workers)


class OrderedRunner:
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
            self._pool = new_pool(self.workers)
            self._generation += 1
        return self._pool

    def _drop_pool(self, generation: int) -> None:
        if self._pool is not None and generation == self._generation:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _submit(self, task: Task) -> tuple[cf.Future, int]:
        try:
            future = self._executor().submit(process_item, self.load, task.index, task.key, task.item)
        except BrokenProcessPool:  # broke since the last result we looked at: start a new one
            self._drop_pool(self._generation)
            future = self._executor().submit(process_item, self.load, task.index, task.key, task.item)
        return future, self._generation

    def _isolated(self, task: Task) -> Outcome:
        with new_pool(1) as pool:
            try:
                return pool.submit(process_item, self.load, task.index, task.key, task.item).result()
            except BrokenProcessPool:
                return Outcome(
                    task.index, task.key, task.item, reason="worker_crashed: the worker process died on this item"
                )

    def run(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
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
