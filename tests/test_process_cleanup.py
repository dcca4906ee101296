"""How a run stops: nothing outlives it, and Ctrl-C prints no traceback.

`kill -9` of a run leaves no process behind (the grading worker exits with its parent); Ctrl-C
prints no traceback of the worker, whether it is still starting or idle. Each test waits for a
sign from the run (a process, a file, a signal handler in place), never for a fixed time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import (
    alive,
    catches_sigint,
    descendants,
    grading_worker,
    in_session,
    kill_all,
    start,
    stop,
    wait_for,
)

SCRIPT_GRADE_AND_WAIT = """
import os, sys, time
from stepprune.grading import Grader
grader = Grader(timeout_s=60)
assert grader.grade("2", r"\\boxed{2}").correct
print("graded", flush=True)
time.sleep(120)
"""


def _run_command(model: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "stepprune", "run", "--model", str(model), "--limit", "3",
        "--samples", "2", "--thresholds", "0,0.2,0.5", "--answer-max-tokens", "3",
        "--device", "cpu", "--out", str(out),
    ]  # fmt: skip


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
def test_kill_9_of_a_run_leaves_no_stepprune_process(tiny_r1_dir: Path, tmp_path: Path) -> None:
    run = start(_run_command(tiny_r1_dir, tmp_path / "out"), tmp_path / "log")
    below = []
    try:
        assert wait_for(lambda: grading_worker(run.pid) is not None, timeout=120, interval=0.05)
        below = descendants(run.pid)  # the grading worker, multiprocessing's resource tracker
        run.kill()
        run.wait()
        survivors = lambda: [p for p in below if alive(p)]  # noqa: E731
        assert wait_for(lambda: not survivors(), timeout=5), survivors()
    finally:
        stop(run)
        kill_all(below)


def _has_traces(out: Path) -> bool:
    path = out / "traces.jsonl"
    return path.exists() and path.read_bytes().count(b"\n") > 0


@pytest.mark.e2e
@pytest.mark.parametrize("when", ["worker starting", "worker idle"])
def test_ctrl_c_prints_no_traceback_and_leaves_no_process(
    when: str, tiny_r1_dir: Path, tmp_path: Path
) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group, the worker included:
    while the worker still imports (about a second), or once it has graded (traces written)."""
    log, out = tmp_path / "log", tmp_path / "out"
    run = start(_run_command(tiny_r1_dir, out), log, start_new_session=True)
    below = []
    try:
        # The parent ignores Ctrl-C while it starts the worker (which inherits the ignoring):
        # a Ctrl-C then is lost. Ready: the worker exists and the parent's handler is back.
        ready = lambda: grading_worker(run.pid) is not None and catches_sigint(run.pid)  # noqa: E731
        assert wait_for(ready, timeout=120, interval=0.01)
        if when == "worker idle":
            assert wait_for(lambda: _has_traces(out), timeout=120, interval=0.01)
        below = descendants(run.pid)
        os.killpg(run.pid, signal.SIGINT)
        run.wait(timeout=60)
        assert run.returncode != 0
        assert wait_for(lambda: not any(alive(p) for p in below), timeout=5)
        # Every process that could write to the log has ended: what it printed is there.
        assert wait_for(lambda: not in_session(run.pid), timeout=5), in_session(run.pid)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    finally:
        stop(run)
        kill_all(below)
