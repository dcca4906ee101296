"""Issue 12, items 7 and 9: how a run stops.

`kill -9` of a run leaves no process behind (the grading worker exits with its parent); Ctrl-C
prints no traceback of the worker; math-verify's own timeout messages never reach the terminal
(a timed-out answer is an incorrect answer, counted).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stepprune.grading import Grader, _grade_in_worker
from tests.processes import alive, descendants, grading_worker, kill_all, stop, wait_for

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


def _start(command: list[str], log: Path, **kwargs) -> subprocess.Popen:
    # Output to a file, never a pipe: a surviving worker would hold a pipe open forever.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as handle:
        return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, **kwargs)


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


def test_kill_9_of_a_run_leaves_no_stepprune_process(tiny_r1_dir: Path, tmp_path: Path) -> None:
    run = _start(_run_command(tiny_r1_dir, tmp_path / "out"), tmp_path / "log")
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


@pytest.mark.parametrize("when", ["worker starting", "worker idle"])
def test_ctrl_c_prints_no_traceback_and_leaves_no_process(
    when: str, tiny_r1_dir: Path, tmp_path: Path
) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group, the worker included:
    while the worker still imports (about a second), or once it has graded (traces written)."""
    log, out = tmp_path / "log", tmp_path / "out"
    run = _start(_run_command(tiny_r1_dir, out), log, start_new_session=True)
    below = []
    try:
        assert wait_for(lambda: grading_worker(run.pid) is not None, timeout=120, interval=0.01)
        if when == "worker starting":
            time.sleep(0.2)  # the parent has finished starting it (a Ctrl-C before is lost)
        else:
            assert wait_for(lambda: _has_traces(out), timeout=120, interval=0.01)
        below = descendants(run.pid)
        os.killpg(run.pid, signal.SIGINT)
        run.wait(timeout=60)
        assert run.returncode != 0
        assert wait_for(lambda: not any(alive(p) for p in below), timeout=5)
        time.sleep(0.5)  # anything a dying worker would print has been written by now
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    finally:
        stop(run)
        kill_all(below)


def _comparison_hangs(gold: str, answer_text: str, mv_timeout_s: int):
    """Worker whose sympy comparison hangs: math-verify times out and logs "Timeout during
    comparison" (as it does on a hard answer). Module level so that the worker unpickles it."""
    import math_verify.grader

    math_verify.grader.sympy_expr_eq = lambda *args, **kwargs: time.sleep(30)
    return _grade_in_worker(gold, answer_text, mv_timeout_s)


def test_math_verify_timeout_is_silent_incorrect_and_counted(capfd, caplog) -> None:
    with caplog.at_level(logging.WARNING), Grader(timeout_s=6.0, _worker=_comparison_hangs) as g:
        # 34.0: the string comparison fails, the sympy one hangs and times out.
        grade = g.grade("34", r"\boxed{34.0}")
    assert not grade.correct and grade.prediction is not None
    # The worker writes to the same terminal as the progress display: nothing may appear there.
    err = capfd.readouterr().err
    assert "Timeout during comparison" not in err and "Traceback" not in err, err
    assert grade.issue == "timeout" and g.timeouts == 1


@pytest.mark.parametrize("answer", [r"\boxed{34}", r"\boxed{35}"])
def test_ordinary_grades_have_no_issue(answer: str) -> None:
    with Grader(timeout_s=20.0) as g:
        grade = g.grade("34", answer)
    assert grade.issue is None and g.timeouts == 0
