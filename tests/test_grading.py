"""Tests of grading with math-verify: extraction, verdicts, timeouts and worker recovery.

math-verify's own timeout messages never reach the terminal: a timed-out answer is an incorrect
answer, counted.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepprune.grading import Grade, Grader, _grade_in_worker, extract_prediction
from tests.processes import cmdline, grading_worker, parent

POLAR_GOLD = r"\left( 3, \frac{\pi}{2} \right)"  # MATH-500 test/precalculus/807


def _slow_on_request(gold: str, answer_text: str, mv_timeout_s: int) -> Grade:
    """Worker for the timeout test: hangs on the answer "SLEEP", grades normally otherwise.

    Before hanging it writes its process id to the file named by ``gold``, so that the test can
    check that the process was killed. Module level so that the spawned worker can unpickle it.
    """
    if answer_text == "SLEEP":
        Path(gold).write_text(str(os.getpid()))
        time.sleep(60)
    return _grade_in_worker(gold, answer_text, mv_timeout_s)


def _failing_on_request(gold: str, answer_text: str, mv_timeout_s: int) -> Grade:
    """Worker that raises on "RAISE", dies on "DIE", and grades normally otherwise."""
    if answer_text == "RAISE":
        raise RuntimeError("boom")
    if answer_text == "DIE":
        os._exit(1)  # like a worker killed for memory: the pool breaks
    return _grade_in_worker(gold, answer_text, mv_timeout_s)


@pytest.fixture(scope="module")
def grader() -> Iterator[Grader]:
    # One worker for the module (the first worker of a process costs about a second).
    with Grader(timeout_s=20.0) as g:
        yield g


@pytest.mark.parametrize(
    ("gold", "answer_text", "prediction", "correct"),
    [
        ("34", r"The answer is \boxed{34}.", "34", True),
        ("34", r"\boxed{35}", "35", False),
        ("34", r"So the total is $\boxed{34}$ apples.", "34", True),
        # The last box counts, not an earlier one.
        (
            "34",
            r"First \boxed{12}. Then I found a mistake. So the result is \boxed{34}",
            "34",
            True,
        ),
        (
            "12",
            r"First \boxed{12}. Then I found a mistake. So the result is \boxed{34}",
            "34",
            False,
        ),
        # Fractions: math-verify normalises 0.5 and 1/2 to \frac{1}{2}, and compares values.
        (r"\frac{1}{2}", r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", True),
        (r"\frac{1}{2}", r"\boxed{0.5}", r"\frac{1}{2}", True),
        (r"\frac{1}{2}", r"\boxed{1/2}", r"\frac{1}{2}", True),
        ("0.5", r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", True),
        ("1/2", r"\boxed{\frac12}", r"\frac{1}{2}", True),
        (r"\frac{1}{2}", r"\boxed{\frac{1}{3}}", r"\frac{1}{3}", False),
        # MATH-500 LaTeX gold: a point in polar coordinates.
        (
            POLAR_GOLD,
            r"The point is $\boxed{\left(3, \frac{\pi}{2}\right)}$.",
            r"(3, \frac{\pi}{2})",
            True,
        ),
        (POLAR_GOLD, r"\boxed{(3, \pi/2)}", r"(3, \pi/2)", True),
        (POLAR_GOLD, r"\boxed{(3, \pi)}", r"(3, \pi)", False),
        (POLAR_GOLD, r"\boxed{(2, \frac{\pi}{2})}", r"(2, \frac{\pi}{2})", False),
        # Anchored answers without a box still count.
        ("34", "The answer is 34.", "34", True),
        ("34", "Final answer: 35", "35", False),
        # No answer at all.
        ("5", "I could not solve this problem.", None, False),
        ("34", "", None, False),
        # No stray-number fallback: math-verify's default (anchorless) extraction would take the 3
        # here and call it correct; the old notebook's fallback did the same.
        ("3", "I am not sure, maybe step 3 helps", None, False),
        ("34", "So x = 34.", None, False),
        # An unclosed box is not an answer either.
        ("34", r"\boxed{34", None, False),
    ],
)
def test_the_last_box_or_anchored_answer_is_compared_by_value_with_the_gold(
    grader: Grader, gold: str, answer_text: str, prediction: str | None, correct: bool
) -> None:
    grade = grader.grade(gold, answer_text)
    assert grade == Grade(prediction=prediction, correct=correct)
    # The worker and the in-process extraction agree on what was extracted.
    assert extract_prediction(answer_text) == grade.prediction


def test_a_grade_is_a_frozen_value() -> None:
    assert Grade("34", True) == Grade(prediction="34", correct=True)
    with pytest.raises(AttributeError):
        Grade("34", True).correct = False  # type: ignore[misc]


def test_extract_prediction_in_process() -> None:
    assert extract_prediction(r"Thus $\boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"
    assert extract_prediction(r"\boxed{7} and then \boxed{42}") is not None
    assert extract_prediction("maybe step 3 helps") is None


def test_unparseable_gold_is_incorrect(grader: Grader) -> None:
    # Nothing in the gold to extract: the answer cannot be right, and grading must not crash.
    grade = grader.grade(r"\boxed{}", r"\boxed{34}")
    assert grade == Grade(prediction="34", correct=False)


def test_timeout_kills_worker_and_recovers(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    with Grader(timeout_s=1.0, _worker=_slow_on_request) as g:
        assert g.grade("34", r"\boxed{34}") == Grade("34", True)  # starts the worker
        start = time.monotonic()
        assert g.grade(str(pid_file), "SLEEP") == Grade(prediction=None, correct=False)
        elapsed = time.monotonic() - start
        # 1 s of waiting plus the kill; far less than the 60 s the worker would sleep.
        assert 0.9 < elapsed < 10.0
        # The hung worker is gone (killed and reaped), not left sleeping in the background.
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 0)
        # A fresh worker grades the next answer.
        assert g.grade("34", r"\boxed{34}") == Grade("34", True)
        assert g.grade("34", r"\boxed{35}") == Grade("35", False)


def test_worker_exception_and_crash_recover() -> None:
    with Grader(timeout_s=20.0, _worker=_failing_on_request) as g:
        assert g.grade("34", "RAISE") == Grade(None, False)
        assert g.grade("34", r"\boxed{34}") == Grade("34", True)
        assert g.grade("34", "DIE") == Grade(None, False)
        assert g.grade("34", r"\boxed{34}") == Grade("34", True)


def test_a_closed_grader_starts_a_new_worker_when_used_again() -> None:
    g = Grader(timeout_s=20.0)
    assert g.grade("2", r"\boxed{2}").correct
    g.close()
    g.close()  # idempotent
    assert g.grade("2", r"\boxed{3}") == Grade("3", False)  # lazily starts a new worker
    g.close()


def test_a_timeout_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError):
        Grader(timeout_s=0)


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
def test_ordinary_grades_have_no_issue(answer: str, grader: Grader) -> None:
    grade = grader.grade("34", answer)
    assert grade.issue is None and grader.timeouts == 0


@pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here"
)
def test_workers_are_forked_from_a_fork_server_that_imported_math_verify() -> None:
    """A worker is forked from multiprocessing's fork server, which preloaded math-verify and
    graded once (so a process that starts several workers pays the imports once), and never
    from this process itself (no plain fork of a process that may hold CUDA state)."""
    with Grader(timeout_s=20.0) as grader:
        assert grader.grade("2", r"\boxed{2}").correct
        worker = grading_worker(os.getpid())
        assert worker is not None
        server = parent(worker[0])
        assert server is not None and server != os.getpid()
        assert "multiprocessing.forkserver" in cmdline(server)
        assert "stepprune.grading_preload" in cmdline(server)
