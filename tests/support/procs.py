"""Processes seen through Linux /proc, for tests that kill a parent and check its children."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(stat.parent.name)
        if fields and int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie has exited."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def wait_for_children(proc, n: int, timeout: float = 120) -> list[int]:
    """The children of the running ``proc`` (a Popen) once it has at least ``n``, or fewer if it
    ends or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while len(kids := children(proc.pid)) < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return kids


def survivors(pids: list[int], timeout: float) -> list[int]:
    """Those of ``pids`` still running after up to ``timeout`` seconds of waiting for them to exit."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def survivors_of_kill_9(
    cmd: list[str], n: int, cwd: str | os.PathLike, timeout: float = 5
) -> tuple[list[int], list[int]]:
    """Start ``cmd``, wait until it has ``n`` children, SIGKILL it, and return (its children, those
    still running ``timeout`` seconds later). Survivors are killed before this returns, so none is
    left to the next test; fewer than ``n`` children means the command never got that far."""
    driver = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids, left = [], []
    try:
        kids = wait_for_children(driver, n)
        if len(kids) >= n:
            driver.send_signal(signal.SIGKILL)
            driver.wait()
            left = survivors(kids, timeout)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return kids, left
