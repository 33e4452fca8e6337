"""The download rate limit: a token bucket (clock injected, so its behaviour is testable), shared
by every task of a Ray build through one named actor, and the two calls the download path makes
(``acquire`` before a download, ``back_off`` after a rate-limit answer). Outside a Ray build that
runs the actor, both calls do nothing (the local engine paces downloads with ``--sleep``)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

ACTOR_NAME = "prep-download-limiter"


class TokenBucket:
    """``rate`` grants per second with bursts of up to ``burst``, as a generic cell rate
    algorithm: ``reserve`` books the next free slot and says how long the caller waits for it, so
    the bucket itself never blocks and one actor can serve a whole cluster."""

    def __init__(self, rate: float, burst: int = 1, clock: Callable[[], float] = time.monotonic):
        if not (rate > 0 and math.isfinite(rate)) or burst < 1:
            raise ValueError(f"a token bucket needs a positive rate and burst >= 1 (got rate {rate}, burst {burst})")
        self.interval, self.tolerance, self.clock = 1.0 / rate, (burst - 1) / rate, clock
        self._tat = clock()  # theoretical arrival time of the next grant

    def reserve(self) -> float:
        """Take the next grant; returns the seconds to wait before using it (0 when free now)."""
        now = self.clock()
        tat = max(self._tat, now)
        start = max(now, tat - self.tolerance)
        self._tat = tat + self.interval
        return start - now

    def back_off(self, seconds: float) -> None:
        """No grant for the next ``seconds`` (the site said "too many requests"), for every caller."""
        self._tat = max(self._tat, self.clock() + seconds + self.tolerance)


class BucketActor:
    """The bucket as a Ray actor (``ray.remote(BucketActor)``), one per build."""

    def __init__(self, rate: float, burst: int):
        self.bucket = TokenBucket(rate, burst)

    def reserve(self) -> float:
        return self.bucket.reserve()

    def back_off(self, seconds: float) -> None:
        self.bucket.back_off(seconds)


def _limiter():
    """This build's limiter actor, or None. Looked up on every call (one small request next to a
    download of seconds): a cached handle would outlive the build that made it."""
    if "ray" not in sys.modules:  # not inside a Ray worker or driver
        return None
    import ray

    if not ray.is_initialized():
        return None
    try:
        return ray.get_actor(ACTOR_NAME)
    except ValueError:  # no rate limit in this build
        return None


def acquire() -> None:
    """Wait for the cluster-wide grant to start one download."""
    limiter = _limiter()
    if limiter is not None:
        import ray

        time.sleep(ray.get(limiter.reserve.remote()))


def back_off(seconds: float) -> None:
    """Pause every download of the build for ``seconds`` (fire and forget)."""
    limiter = _limiter()
    if limiter is not None:
        limiter.back_off.remote(seconds)
