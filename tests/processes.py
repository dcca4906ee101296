"""Process helpers for tests that start, kill and interrupt `stepprune` (Linux /proc).

A process is identified by (pid, start time), so that a pid reused by the system is never
taken for a survivor; a zombie (dead, not yet reaped by its new parent) counts as gone.

Readiness is read from the child, never guessed with a fixed sleep: ``wait_for`` polls a
condition up to a deadline, ``catches_sigint`` tells when a process has its Ctrl-C handler in
place, ``in_session`` lists what is left of a process's session.

``ForkServer`` runs many short ``python -m stepprune ARGS`` commands from one interpreter that
has imported stepprune, torch and transformers once (``invoke``); ``invoke_interpreter`` runs
one in a fresh interpreter. Both run the command in a session of its own and report whether any
process of it was left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

Proc = tuple[int, int]  # (pid, start time in clock ticks since boot)


def _stat(pid: int) -> tuple[int, str, int, int] | None:
    """(parent pid, state, start time, session id) of ``pid``; None when it no longer exists."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": the comm may hold spaces
    return int(fields[1]), fields[0], int(fields[19]), int(fields[3])


def _living() -> Iterable[tuple[int, tuple[int, str, int, int]]]:
    """(pid, stat) of every process that exists and is not a zombie."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] != "Z":
                yield int(entry), stat


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def descendants(root: int) -> list[Proc]:
    """Every living process below ``root`` (children, their children, ...)."""
    children: dict[int, list[Proc]] = {}
    for pid, stat in _living():
        children.setdefault(stat[0], []).append((pid, stat[2]))
    found, todo = [], [root]
    while todo:
        for proc in children.get(todo.pop(), []):
            found.append(proc)
            todo.append(proc[0])
    return found


def alive(proc: Proc) -> bool:
    stat = _stat(proc[0])
    return stat is not None and stat[2] == proc[1] and stat[1] != "Z"


def in_session(sid: int) -> list[Proc]:
    """Every living process of session ``sid`` (a process started with
    ``start_new_session=True`` leads the session of its own pid)."""
    return [(pid, stat[2]) for pid, stat in _living() if stat[3] == sid]


def catches_sigint(pid: int) -> bool:
    """Whether ``pid`` has a handler for SIGINT in place now (neither default nor ignored): the
    ``SigCgt`` mask of /proc/PID/status, where signal n is bit n - 1."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return False
    masks = dict(line.split(":\t", 1) for line in lines if line.startswith(("SigCgt", "SigIgn")))
    bit = 1 << (signal.SIGINT - 1)
    return bool(int(masks["SigCgt"], 16) & bit) and not int(masks["SigIgn"], 16) & bit


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def parent(pid: int) -> int | None:
    """The parent pid of ``pid``; None when it no longer exists."""
    stat = _stat(pid)
    return None if stat is None else stat[0]


def grading_worker(root: int) -> Proc | None:
    """The grading worker below ``root``, if started: a child of multiprocessing's fork server
    (which has the same command line), or a spawned process where there is no fork server."""
    server = "multiprocessing.forkserver"
    for proc in descendants(root):
        line = cmdline(proc[0])
        if "spawn_main" in line:
            return proc
        above = parent(proc[0])
        if server in line and above is not None and server in cmdline(above):
            return proc
    return None


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


# -- running many short `stepprune` commands ----------------------------------------------------


@dataclass
class Finished:
    """How a command ended: exit code, its output, its wall time, and whether a process of its
    session was still alive after it exited (then killed)."""

    code: int
    stdout: str
    stderr: str
    seconds: float
    leftover: bool = False


# What the fork server imports once, before any command (with torch and transformers, which they
# import). A module that no longer exists is skipped (the command imports what it needs).
PRELOAD = (
    "stepprune.bench.kv",
    "stepprune.bench.scorers",
    "stepprune.bench.scoring",
    "stepprune.cli",
    "stepprune.experiment",
    "stepprune.reporting.report",
    "stepprune.reporting.show",
)

# The fork server: one interpreter that has imported PRELOAD (sys.argv[1:]) and, per request,
# forks a child that runs `python -m stepprune ARGS` (runpy, as the interpreter does) in its own
# session, with its own working folder, environment, stdout and stderr files, and writes its exit
# status to a file when it ends. A command costs what it does, not the 3-5 s of imports.
SERVER = r"""
import atexit, importlib, json, os, runpy, signal, sys, traceback

for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
from transformers import AutoModelForCausalLM, AutoTokenizer

def case(request):
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # As a shell starts a command: Python's own Ctrl-C handler, whatever the test process that
    # started this server had (a signal it ignored would stay ignored in every command).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.argv = ["stepprune", *request["args"]]
    try:
        runpy.run_module("stepprune", run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(exit.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1

signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished cases
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        continue
    code = 1
    try:
        code = case(request)
        atexit._run_exitfuncs()  # what the interpreter runs at exit (multiprocessing's clean-up)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            with open(request["status"] + ".tmp", "w") as handle:
                handle.write(str(code))
            os.replace(request["status"] + ".tmp", request["status"])
            # Without tearing down every module (a second with torch loaded): nothing of the
            # command is left to run.
            os._exit(code)
"""


class ForkServer:
    """Starts commands (``spawn``) in children of one pre-loaded interpreter (``SERVER``).
    Thread-safe: several commands may run at once."""

    def __init__(self, env: dict[str, str], preload: tuple[str, ...] = PRELOAD) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER, *preload],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lock = threading.Lock()
        assert self.process.stdout.readline().strip() == "ready", "the fork server did not start"

    def spawn(self, args: list[str], work: Path, env: dict[str, str]) -> int:
        """Start ``python -m stepprune ARGS`` in the folder ``work`` (its stdout, stderr and
        status files go there); returns its pid, which also leads its session."""
        request = {"args": args, "cwd": str(work), "env": env, "status": str(work / "status")}
        request.update(stdout=str(work / "stdout"), stderr=str(work / "stderr"))
        with self.lock:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            return int(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists (a zombie included: it is not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def end_group(pgid: int, timeout: float = 5.0) -> bool:
    """Wait up to ``timeout`` s for every process of the group to end, then kill what is left;
    returns whether anything was left."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
            return True
        time.sleep(0.05)


def invoke(
    server: ForkServer, args: list[str], work: Path, env: dict[str, str], timeout: float
) -> Finished:
    """Run one command through the fork server; it is killed after ``timeout`` s."""
    started = time.perf_counter()
    pid = server.spawn(args, work, env)
    wait_for(lambda: not pid_alive(pid), timeout=timeout)
    timed_out = pid_alive(pid)
    if timed_out:
        os.killpg(pid, signal.SIGKILL)
    seconds = time.perf_counter() - started
    leftover = end_group(pid)
    status = work / "status"
    code = int(status.read_text()) if status.exists() else -signal.SIGKILL
    stderr = (work / "stderr").read_text(errors="replace")
    if timed_out:
        stderr += f"\n(killed after {timeout} s)"
    stdout = (work / "stdout").read_text(errors="replace")
    return Finished(code, stdout, stderr, seconds, leftover=leftover)


def invoke_interpreter(
    args: list[str], work: Path, env: dict[str, str], timeout: float
) -> Finished:
    """Run ``sys.executable -m stepprune ARGS`` itself (a fresh interpreter) in the folder
    ``work``; it is killed after ``timeout`` s."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "stepprune", *args],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\n(killed after {timeout} s)".encode()
    seconds = time.perf_counter() - started
    leftover = end_group(process.pid)
    return Finished(
        process.returncode,
        stdout.decode(errors="replace"),
        stderr.decode(errors="replace"),
        seconds,
        leftover=leftover,
    )
