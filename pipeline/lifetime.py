"""Worker processes that never outlive the process that started them: ``die_with_parent``, called
first thing in a worker (prep's pools, the training loader's DataLoader workers)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_WATCHDOG_SECONDS = 1.0


def die_with_parent(parent: int, *_: object) -> None:
    """A worker whose parent is killed (kill -9, OOM) must not live on, reparented and blocked on
    a queue nobody reads (a DataLoader worker's exit otherwise waits on its queue's feeder thread
    for ever). Linux kills it at once (parent-death signal); elsewhere, or if the signal was set
    too late, a thread notices the new parent pid within a second. Extra arguments are ignored, so
    ``functools.partial(die_with_parent, pid)`` serves as a DataLoader ``worker_init_fn``."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCHDOG_SECONDS)
        os._exit(1)

    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
