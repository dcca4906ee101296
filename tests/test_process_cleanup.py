"""How a run stops: nothing outlives it, and Ctrl-C prints no traceback.

`kill -9` of a run leaves no process behind (the grading worker exits with its parent); Ctrl-C
prints no traceback of the worker, whether it is still starting or idle. Each test waits for a
sign from the run (a process, a file, a signal handler in place), never for a fixed time. The
runs are children of the fork server (``tests.processes``: `python -m stepprune` without its
imports, each in a session of its own, as a shell starts a command).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import (
    ForkServer,
    alive,
    catches_sigint,
    descendants,
    end_group,
    grading_worker,
    in_session,
    kill_all,
    pid_alive,
    stop,
    wait_for,
)

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}

SCRIPT_GRADE_AND_WAIT = """
import os, sys, time
from stepprune.grading import Grader
grader = Grader(timeout_s=60)
assert grader.grade("2", r"\\boxed{2}").correct
print("graded", flush=True)
time.sleep(120)
"""


def _run_args(model: Path, out: Path) -> list[str]:
    return [
        "run", "--model", str(model), "--limit", "3", "--samples", "2", "--thresholds",
        "0,0.2,0.5", "--answer-max-tokens", "3", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip


def _start(server: ForkServer, model: Path, tmp_path: Path) -> int:
    """``python -m stepprune run`` as a child of the fork server (in a session of its own, its
    output to files in ``tmp_path / "work"``); its pid."""
    work = tmp_path / "work"
    work.mkdir()
    return server.spawn(_run_args(model, tmp_path / "out"), work, ENV)


@pytest.mark.e2e
def test_grading_worker_exits_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", SCRIPT_GRADE_AND_WAIT], stdout=subprocess.PIPE, text=True
    )
    below = []
    try:
        assert parent.stdout.readline().strip() == "graded"
        below = descendants(parent.pid)
        worker = grading_worker(parent.pid)
        assert worker is not None
        parent.kill()
        parent.wait()
        assert wait_for(lambda: not any(alive(p) for p in below), timeout=5), [
            p for p in below if alive(p)
        ]
    finally:
        stop(parent)
        kill_all(below)


@pytest.mark.e2e
def test_kill_9_of_a_run_leaves_no_stepprune_process(
    tiny_r1_dir: Path, tmp_path: Path, fork_server: ForkServer
) -> None:
    run = _start(fork_server, tiny_r1_dir, tmp_path)
    below = []
    try:
        assert wait_for(lambda: grading_worker(run) is not None, timeout=120, interval=0.05)
        below = descendants(run)  # the grading worker, multiprocessing's resource tracker
        os.kill(run, signal.SIGKILL)
        assert wait_for(lambda: not pid_alive(run), timeout=10)
        survivors = lambda: [p for p in below if alive(p)]  # noqa: E731
        assert wait_for(lambda: not survivors(), timeout=5), survivors()
    finally:
        end_group(run, timeout=0)
        kill_all(below)


def _has_traces(out: Path) -> bool:
    path = out / "traces.jsonl"
    return path.exists() and path.read_bytes().count(b"\n") > 0


@pytest.mark.e2e
@pytest.mark.parametrize("when", ["worker starting", "worker idle"])
def test_ctrl_c_prints_no_traceback_and_leaves_no_process(
    when: str, tiny_r1_dir: Path, tmp_path: Path, fork_server: ForkServer
) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group, the worker included:
    while the worker still imports (about a second), or once it has graded (traces written)."""
    run = _start(fork_server, tiny_r1_dir, tmp_path)
    work, out = tmp_path / "work", tmp_path / "out"
    below = []
    try:
        # The parent ignores Ctrl-C while it starts the worker (which inherits the ignoring):
        # a Ctrl-C then is lost. Ready: the worker exists and the parent's handler is back.
        ready = lambda: grading_worker(run) is not None and catches_sigint(run)  # noqa: E731
        assert wait_for(ready, timeout=120, interval=0.01)
        if when == "worker idle":
            assert wait_for(lambda: _has_traces(out), timeout=120, interval=0.01)
        below = descendants(run)
        os.killpg(run, signal.SIGINT)
        assert wait_for(lambda: not pid_alive(run), timeout=60)
        # It ended by itself (the fork server's child writes its exit status), with an error.
        assert int((work / "status").read_text()) != 0
        assert wait_for(lambda: not any(alive(p) for p in below), timeout=5)
        # Every process that could write to the output has ended: what it printed is there.
        assert wait_for(lambda: not in_session(run), timeout=5), in_session(run)
        text = (work / "stdout").read_text(errors="replace")
        text += (work / "stderr").read_text(errors="replace")
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    finally:
        end_group(run, timeout=0)
        kill_all(below)
