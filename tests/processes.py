"""Process helpers for tests that start, kill and interrupt `stepprune run` (Linux /proc).

A process is identified by (pid, start time), so that a pid reused by the system is never
taken for a survivor; a zombie (dead, not yet reaped by its new parent) counts as gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

Proc = tuple[int, int]  # (pid, start time in clock ticks since boot)


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of ``pid``; None when it no longer exists."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": the comm may hold spaces
    return int(fields[1]), fields[0], int(fields[19])


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def descendants(root: int) -> list[Proc]:
    """Every living process below ``root`` (children, their children, ...)."""
    children: dict[int, list[Proc]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] != "Z":
                children.setdefault(stat[0], []).append((int(entry), stat[2]))
    found, todo = [], [root]
    while todo:
        for proc in children.get(todo.pop(), []):
            found.append(proc)
            todo.append(proc[0])
    return found


def alive(proc: Proc) -> bool:
    stat = _stat(proc[0])
    return stat is not None and stat[2] == proc[1] and stat[1] != "Z"


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def grading_worker(root: int) -> Proc | None:
    """The grading worker below ``root`` (a spawned multiprocessing process), if started."""
    return next((p for p in descendants(root) if "spawn_main" in cmdline(p[0])), None)


def kill_all(procs: list[Proc]) -> None:
    """SIGKILL those of ``procs`` still alive (a test's cleanup: nothing outlives it)."""
    for proc in procs:
        if alive(proc):
            with contextlib.suppress(OSError):
                os.kill(proc[0], signal.SIGKILL)


def stop(process: subprocess.Popen) -> None:
    """Kill ``process`` and everything below it, and reap it."""
    below = descendants(process.pid)
    if process.poll() is None:
        process.kill()
    process.wait()
    kill_all(below)
