"""The options every `prep shards <corpus>` command shares, as one object.

A corpus command declares only its own options plus one ``opts: BuildOptions`` parameter and is
decorated with ``pipeline.cli_support.with_options`` (the project's one pattern for shared
options), which shows Typer the shared flags (``--out``, ``--workers``, ``--part``,
``--shard-size``, ``--limit``, ``--progress``, ``--engine``, ``--ray-address``,
``--ray-task-cpus``) in its place and hands the command their values as one ``BuildOptions``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.prep.build import DEFAULT_SHARD_SIZE
from pipeline.prep.commands import common
from pipeline.prep.shard import BuildSummary


@dataclass(frozen=True)
class BuildOptions:
    out: common.OutOpt
    workers: common.WorkersOpt = 1
    part: common.PartOpt = "0/1"
    shard_size: common.ShardSizeOpt = DEFAULT_SHARD_SIZE
    limit: common.LimitOpt = None
    progress: common.ProgressOpt = True
    engine: common.EngineOpt = common.Engine.local
    ray_address: common.RayAddressOpt = None
    ray_task_cpus: common.RayTaskCpusOpt = 1.0

    def run(
        self,
        items: list,
        load: Callable,
        *,
        key: Callable,
        desc: str,
        input_warnings: dict | None = None,
        ray_extra: dict | None = None,
    ) -> BuildSummary:
        """Build the shards of ``items`` with these options (see ``common.run_build``);
        ``ray_extra`` adds to the Ray engine's options (e.g. a download rate)."""
        ray = common.ray_options(self.engine, self.ray_address, self.workers, self.ray_task_cpus, **(ray_extra or {}))
        return common.run_build(
            items,
            load,
            self.out,
            key=key,
            workers=self.workers,
            part=self.part,
            shard_size=self.shard_size,
            limit=self.limit,
            progress=self.progress,
            desc=desc,
            input_warnings=input_warnings,
            ray=ray,
        )
