"""The Ray engine's progress actor: every shard task's latest counts, summed for the driver's
bar. A module of its own that imports nothing: an actor is a process of its own that imports its
class's module, and this one should start in a fraction of a second, not load the builder."""

from __future__ import annotations

import collections


class ProgressActor:
    """Counts by shard, each the task's latest absolute figures: a retried task starts its
    shard's counts again rather than adding to the failed attempt's."""

    def __init__(self):
        self.shards: dict[int, tuple[int, int, dict]] = {}

    def update(self, shard: int, done: int, written: int, failures: dict) -> None:
        self.shards[shard] = (done, written, failures)

    def totals(self) -> tuple[int, int, dict]:
        failures: collections.Counter = collections.Counter()
        for _, _, f in self.shards.values():
            failures.update(f)
        return sum(s[0] for s in self.shards.values()), sum(s[1] for s in self.shards.values()), dict(failures)
