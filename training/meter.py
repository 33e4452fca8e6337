"""The trainer's throughput meter: data wait, compute time and items, per log window and per run."""

from __future__ import annotations

import time
from collections import Counter


class Meter:
    """Counts seconds waiting for data, seconds computing and items. The log window restarts at
    every ``window()``; the run's totals leave out the steps before ``count_from`` (the first
    step of a process pays the start-up: worker spawn, shuffle buffers, kernel autotuning)."""

    def __init__(self, count_from: int):
        self.count_from = count_from
        self.win, self.run = Counter(), Counter()
        self.win_start = time.perf_counter()

    def add(self, step: int, data_s: float, compute_s: float, items: int):
        self.win.update(data_s=data_s, compute_s=compute_s, items=items)
        if step >= self.count_from:
            self.run.update(data_s=data_s, compute_s=compute_s, items=items)

    def window(self) -> dict:
        """This window's figures for the log; starts the next window."""
        now = time.perf_counter()
        logs = {
            "items_per_s": self.win["items"] / max(now - self.win_start, 1e-9),
            "time/data_s": self.win["data_s"],
            "time/compute_s": self.win["compute_s"],
        }
        self.win, self.win_start = Counter(), now
        return logs

    def summary(self) -> dict:
        seconds = self.run["data_s"] + self.run["compute_s"]
        return {
            "items_per_s": round(self.run["items"] / seconds, 2) if seconds else None,
            "data_wait_fraction": round(self.run["data_s"] / seconds, 3) if seconds else None,
        }
