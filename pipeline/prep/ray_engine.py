"""Where items run with ``--engine ray``: one Ray task per shard, on any node of a cluster.

The driver makes the shard plan (``pipeline.prep.build``) and holds the build lock; each task runs
the same per-shard writer as the local engine (``shard.write_shard``) under the shard's write lock
and commits with the same marker into the same directory: a local ``--out`` must be seen by every
node at the same path (a shared filesystem); an ``s3://`` one needs none, each task writing in its
node's temporary directory and uploading (``pipeline.storage``). A task whose worker or node dies is
re-run by Ray; one that keeps dying is re-run once more with each item in a child process, so only
an item that kills its process is recorded, as ``worker_crashed``. When there is a progress bar, one
actor sums every task's counts for it (``ray_progress``); a limiter actor
(``pipeline.prep.ratelimit``) paces downloads. ``ray`` is imported only here, when a build uses it.
"""

from __future__ import annotations

import collections
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline import shard_dir, storage
from pipeline.prep import ratelimit
from pipeline.prep.media import reason_kind
from pipeline.prep.ray_progress import ProgressActor
from pipeline.prep.shard import Progress, ShardPlan, ShardRun, build_one_shard, keys_digest
from pipeline.prep.worker import WRITTEN, Outcome

_REPORT_SECONDS = 0.5  # how often a task sends its counts, and the driver redraws the bar
LOOPBACK = "127.0.0.1"  # the only address a Ray started by `prep` listens on (start_local)
_CLUSTER_MODE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start Ray on this machine; "auto" or HOST:PORT: join a cluster
    num_cpus: int | None = None  # CPUs of the Ray started on this machine (None: all)
    cpus_per_task: float = 1.0  # CPUs a shard task reserves: shard tasks per node = node CPUs / this
    max_retries: int = 3  # re-runs of a task whose worker process or node died
    download_rate: float | None = None  # cluster-wide downloads started per second (None: no limit)
    download_burst: int = 1
    lock_wait: float = 600.0  # seconds a task waits for an earlier attempt still writing its shard


class _Reporter:
    """A task's side of the progress actor: absolute counts, sent at most every half second."""

    def __init__(self, actor, shard: int):
        self.actor, self.shard = actor, shard
        self.done = self.written = 0
        self.failures: collections.Counter = collections.Counter()
        self.sent = 0.0

    def item(self, out: Outcome) -> None:
        self.done += 1
        if out.status == WRITTEN:
            self.written += 1
        else:
            self.failures[reason_kind(out.reason)] += 1
        if time.monotonic() - self.sent > _REPORT_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.actor is not None:
            self.actor.update.remote(self.shard, self.done, self.written, dict(self.failures))
        self.sent = time.monotonic()


def build_shard(
    out_dir: str, plan: ShardPlan, load: Callable, extra: dict, progress, isolate: bool, lock_wait: float
) -> dict:
    """One shard in a Ray worker, under its write lock: ``shard.build_one_shard``, unless an
    earlier attempt committed it. Returns the commit marker's contents."""
    out = storage.as_location(out_dir)
    with shard_dir.write_lock(out, plan.shard, lock_wait):
        if shard_dir.is_committed(out, plan.shard):  # an earlier attempt committed, then died
            stats = shard_dir.read_stats(shard_dir.stats_path(out, plan.shard))
            if stats.get("keys_sha1") == keys_digest(plan.tasks):
                return stats
        shard_dir.remove_uncommitted(out, plan.shard)
        reporter = _Reporter(progress, plan.shard)
        stats = build_one_shard(out, plan, load, extra, reporter.item, isolate)
        reporter.flush()
        return stats


class RayConnectError(ValueError):
    """Ray cannot be used from here; the message says what to do."""


def _connect(options: RayOptions) -> bool:
    """Join the cluster (or start Ray here); True when this call started it and must stop it."""
    try:
        import ray
    except ImportError:
        raise RayConnectError("--engine ray needs Ray: pip install -e '.[ray]' (or use --engine local)") from None
    if ray.is_initialized():
        return False
    env = {"env_vars": {"OMP_NUM_THREADS": "1"}}  # one task per CPU: intra-op threads only oversubscribe
    if options.address is None:
        start_local(num_cpus=options.num_cpus, runtime_env=env)
        return True
    _probe(options.address)
    try:
        ray.init(address=options.address, log_to_driver=False, runtime_env=env)
    except ConnectionError as exc:
        raise RayConnectError(f"--ray-address {options.address}: {exc}") from None
    return True


def start_local(num_cpus: int | None = None, **init_options) -> None:
    """Start Ray on this machine with every server it runs on loopback (the GCS, the raylet and
    its object manager, the workers, the dashboard, runtime-env and metrics agents, the driver's
    own worker), then check that it did.

    Ray binds all of them to every interface unless the node's address is loopback, and on Linux
    ``ray.init`` replaces a given 127.0.0.1 by the machine's network address: that is its "cluster
    mode", which RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 switches off. Ray reads the variable when it
    is imported (so where Ray was imported already, its constant is switched too) and the daemons
    inherit it; both are put back after the start, so a later join of a real cluster by address
    is unaffected. A Ray whose node address still comes out elsewhere is stopped, and the build
    refused, rather than left listening on the network.
    """
    import ray

    try:  # where Ray keeps the variable's value (Ray 2.x); the check below covers a Ray without it
        from ray._private import ray_constants
    except ImportError:
        ray_constants = None
    previous_env, previous_mode = os.environ.get(_CLUSTER_MODE_VAR), getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_CLUSTER_MODE_VAR] = "0"
    if previous_mode is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _node_ip_address=LOOPBACK, **init_options
        )
    finally:
        if previous_env is None:
            os.environ.pop(_CLUSTER_MODE_VAR, None)
        else:
            os.environ[_CLUSTER_MODE_VAR] = previous_env
        if previous_mode is not None:
            ray_constants.ENABLE_RAY_CLUSTER = previous_mode
    node_ip = ray.util.get_node_ip_address()
    if node_ip not in (LOOPBACK, "::1"):
        ray.shutdown()
        raise RayConnectError(
            f"the Ray started here would listen on {node_ip}, not on loopback only (this Ray version "
            f"{ray.__version__} ignores {_CLUSTER_MODE_VAR}=0); use --engine local, or start Ray yourself "
            "on a private network and pass --ray-address"
        )


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on an address nothing listens at: Ray itself retries for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        if address == "auto":
            return
        raise RayConnectError(
            f"--ray-address {address!r}: give auto or HOST:PORT (the head's GCS port, 6379 by default)"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayConnectError(
            f"--ray-address {address}: nothing answers there ({exc.strerror or exc}); start the head with "
            "`ray start --head` and pass the address it prints"
        ) from None


def run_plans(run: ShardRun, plans: list[ShardPlan], options: RayOptions) -> None:
    """``build.run_plans`` on Ray: submit every plan, record and commit each shard as it returns."""
    if not plans:
        return
    import ray

    started = _connect(options)
    pending: dict = {}
    try:
        # The actor is a process of its own (about 0.8 CPU-seconds to start): only for a bar.
        counter = ray.remote(ProgressActor).options(num_cpus=0).remote() if run.progress else None
        limiter = None
        if options.download_rate:
            limiter = (
                ray.remote(ratelimit.BucketActor)
                .options(name=ratelimit.ACTOR_NAME, num_cpus=0)
                .remote(options.download_rate, options.download_burst)
            )
            ray.get(limiter.reserve.remote())  # up before any task looks for it
        task = ray.remote(build_shard).options(num_cpus=options.cpus_per_task, max_retries=options.max_retries)

        def submit(plan: ShardPlan, isolate: bool) -> None:
            ref = task.remote(str(run.out), plan, run.load, run.extra, counter, isolate, options.lock_wait)
            pending[ref] = (plan, isolate)

        for plan in plans:
            submit(plan, False)
        with Progress(sum(len(p.tasks) for p in plans), run.desc, run.progress) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=_REPORT_SECONDS, fetch_local=False)
                if counter is not None:
                    bar.set(*ray.get(counter.totals.remote()))
                for ref in done:
                    plan, isolated = pending.pop(ref)
                    stats = _result(ref, run.out, plan, isolated)
                    if stats is None:
                        submit(plan, True)
                        continue
                    run.committed(plan.shard, stats)
            if counter is not None:
                bar.set(*ray.get(counter.totals.remote()))
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def _result(ref, out: Path, plan: ShardPlan, isolated: bool) -> dict | None:
    """A task's marker; None when its worker kept dying and it should run isolated. An error the
    task raised (a full disk, a shard still locked) is raised here as itself."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, (OSError, ValueError)):
            raise exc.cause from exc
        raise
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
        if not isolated:
            return None
        raise shard_dir.ShardDirError(
            f"{shard_dir.tar_path(out, plan.shard)}: its Ray worker died on every "
            f"attempt ({type(exc).__name__}); rerun the same command to resume"
        ) from None
