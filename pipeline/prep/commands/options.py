"""The options every `prep shards <corpus>` command shares, as one object.

A corpus command declares only its own options plus one ``opts: BuildOptions`` parameter and is
registered through ``with_build_options``, which shows Typer the shared flags (``--out``,
``--workers``, ``--part``, ``--shard-size``, ``--limit``, ``--progress``, ``--engine``,
``--ray-address``, ``--ray-task-cpus``) in its place and hands
the command their values as one ``BuildOptions``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
        self, items: list, load: Callable, *, key: Callable, desc: str, input_warnings: dict | None = None, ray_extra: dict | None = None
    ) -> BuildSummary:
        """Build the shards of ``items`` with these options (see ``common.run_build``);
        ``ray_extra`` adds to the Ray engine's options (e.g. a download rate)."""
        ray = common.ray_options(self.engine, self.ray_address, self.workers, self.ray_task_cpus, **(ray_extra or {}))
        return common.run_build(
            items, load, Path(self.out), key=key, workers=self.workers, part=self.part, shard_size=self.shard_size,
            limit=self.limit, progress=self.progress, desc=desc, input_warnings=input_warnings, ray=ray,
        )


def _shared_parameters() -> list[inspect.Parameter]:
    hints = typing.get_type_hints(BuildOptions, include_extras=True)
    return [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
            default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default,
        )
        for f in dataclasses.fields(BuildOptions)
    ]


def with_build_options(command: Callable) -> Callable:
    """``command(..., opts: BuildOptions)`` as a Typer command taking the shared flags."""
    hints = typing.get_type_hints(command, include_extras=True)
    own = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
        for p in inspect.signature(command).parameters.values()
        if p.name != "opts"
    ]
    shared = _shared_parameters()
    names = [p.name for p in shared]

    @functools.wraps(command)
    def wrapper(**kwargs):
        opts = BuildOptions(**{name: kwargs.pop(name) for name in names})
        return command(**kwargs, opts=opts)

    # Required options first (the corpus's, then --out), then the optional ones: the order --help
    # lists them in. Keyword-only, so a required option may follow one with a default.
    params = sorted([*own, *shared], key=lambda p: p.default is not inspect.Parameter.empty)
    wrapper.__signature__ = inspect.Signature(params, return_annotation=None)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
