"""Grade model answers against a reference answer with math-verify, in a worker with a timeout.

The gold answer is parsed first and passed first to ``verify`` (math-verify's comparison is not
symmetric). The prediction is what math-verify extracts from the answer text, preferring the
last ``\\boxed{...}``; an answer that math-verify does not extract is simply ungraded (wrong).
There is deliberately no fallback that picks a number out of the text: the original notebook's
"any 1-3 digit number near the end" fallback produced false positives.

math-verify bounds its own work with ``signal.alarm``, which only works in the main thread of a
process, and sympy can still hang or blow up on adversarial input. :class:`Grader` therefore runs
each grading in a single worker process and kills it when the result is late.

The worker never outlives the run (``kill -9`` included: a watchdog thread exits it when the
run's end of a pipe closes, and on Linux the kernel kills it through ``PR_SET_PDEATHSIG``),
ignores Ctrl-C (the parent handles it and kills the worker, so no worker traceback is printed),
and prints nothing:
math-verify's own log lines ("Timeout during comparison") are caught in the worker and a timed-out
answer comes back as an incorrect ``Grade`` with ``issue="timeout"``, counted by the Grader.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

logger = logging.getLogger(__name__)


class GradingError(RuntimeError):
    """Grading cannot work at all (its worker process cannot start)."""


# Gold answers are bare answers ("34", "\left( 3, \frac{\pi}{2} \right)"), so everything in them
# is the answer: extract without anchors. Checked: every gold of the bundled MATH-500, AIME 24/25,
# AMC 23 and GSM8K sets parses to a sympy object once wrapped in \boxed{}.
_GOLD_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())

# Model answers are free text. boxed_match_priority=0 makes a \boxed{} answer win over every other
# pattern, and among matches of equal priority math-verify takes the rightmost one, so the last
# \boxed{} counts. try_extract_without_anchor=False switches off math-verify's last resort of taking
# any bare number or $...$ in the text ("maybe step 3 helps" -> 3), which is the same false
# positive as the notebook's fallback. Anchored forms ("The answer is 34", "final answer is $x$")
# still count.
_PREDICTION_CONFIG = (
    LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
    ExprExtractionConfig(try_extract_without_anchor=False),
)

# Starting the first worker of a process imports sympy and math-verify (about a second, more on
# a loaded machine). That is not the answer's fault, so the start has its own, generous, limit.
_STARTUP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Grade:
    """The verdict on one answer.

    ``prediction`` is the answer math-verify extracted, as its normalised LaTeX string (e.g.
    ``"34"``, ``"\\frac{1}{2}"``), or None when nothing was extracted or grading failed.
    ``issue`` says why an answer could not be graded normally (``"timeout"``: math-verify or
    the worker ran out of time, the answer counts as incorrect; ``"gold not parsed"``;
    ``"failed: ..."``); it is not part of the verdict, so grades compare on the verdict only.
    """

    prediction: str | None
    correct: bool
    issue: str | None = field(default=None, compare=False)


# (gold, answer_text, math-verify timeout in whole seconds) -> Grade; runs in the worker process.
WorkerFn = Callable[[str, str, int], Grade]


def _parse_gold(gold: str, timeout_s: int | None) -> list[Any]:
    """Parse a gold answer; a bare one is wrapped in ``\\boxed{}`` so that LaTeX parses whole."""
    gold = gold.strip()
    # Wrapping makes the whole string one LaTeX answer: unwrapped, "\left( 3, \frac{\pi}{2}
    # \right)" would only yield the first number-like piece, or nothing.
    text = gold if "\\boxed" in gold else f"\\boxed{{{gold}}}"
    parsed = parse(text, _GOLD_CONFIG, parsing_timeout=timeout_s)
    if not parsed and text != gold:
        parsed = parse(gold, _GOLD_CONFIG, parsing_timeout=timeout_s)
    return parsed


def _parse_prediction(answer_text: str, timeout_s: int | None) -> tuple[list[Any], str | None]:
    """Parse a model answer: math-verify's parse result and its string form (None if empty)."""
    parsed = parse(answer_text, _PREDICTION_CONFIG, parsing_timeout=timeout_s)
    # parse() returns [sympy object, extracted string] on success, [extracted string] when the
    # match did not parse to sympy (verify then compares strings), [] when nothing matched.
    strings = [item for item in parsed if isinstance(item, str)]
    if strings:
        return parsed, strings[-1]
    return parsed, (str(parsed[0]) if parsed else None)


def extract_prediction(answer_text: str) -> str | None:
    """The answer math-verify extracts from ``answer_text``, as in :attr:`Grade.prediction`.

    Runs in the calling process with math-verify's timeout switched off (its ``signal.alarm``
    would fail outside the main thread), so only call it on trusted or short text; use
    :class:`Grader` for grading.
    """
    return _parse_prediction(answer_text, timeout_s=None)[1]


class _MathVerifyLog(logging.Handler):
    """Takes math-verify's log records in the worker: nothing is printed (the worker shares the
    terminal with the parent's progress display); its timeouts are counted."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.timeouts = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Timeout during"):
            self.timeouts += 1


_MV_LOG = _MathVerifyLog()


def _grade_in_worker(gold: str, answer_text: str, mv_timeout_s: int) -> Grade:
    """Grade one answer; runs in the worker process, whose main thread can use signal.alarm.

    Module level so that it pickles. Prints nothing: what went wrong is the Grade's ``issue``,
    reported by the parent.
    """
    timeouts = _MV_LOG.timeouts
    try:
        gold_parsed = _parse_gold(gold, mv_timeout_s)
        pred_parsed, prediction = _parse_prediction(answer_text, mv_timeout_s)
        if not gold_parsed or not pred_parsed:
            # An unparseable gold is a data problem, not the model's: the parent logs it.
            issue = "gold not parsed" if not gold_parsed else None
            if _MV_LOG.timeouts > timeouts:
                issue = "timeout"
            return Grade(prediction=prediction, correct=False, issue=issue)
        correct = bool(verify(gold_parsed, pred_parsed, timeout_seconds=mv_timeout_s))
        # A comparison that timed out counts as unequal: unless another comparison matched,
        # the answer is incorrect, and counted as timed out.
        issue = "timeout" if not correct and _MV_LOG.timeouts > timeouts else None
        return Grade(prediction=prediction, correct=correct, issue=issue)
    except Exception as error:  # never let one odd answer end a long run
        return Grade(None, False, issue=f"failed: {type(error).__name__}: {error}")


def _exit_with_parent() -> None:
    """Make this worker end when the process that asked for it (the run) does, even by SIGKILL.

    That process is multiprocessing's "parent process"; its sentinel (a pipe) reads end of file
    the moment it dies. A daemon thread waits on it and exits. On Linux the kernel also sends
    SIGKILL when the worker's own parent dies (``PR_SET_PDEATHSIG``), which ends a worker busy
    in C code too: that parent is the run (spawn) or multiprocessing's fork server, which
    exits as soon as the run is gone.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # no prctl: the watchdog alone
            pass
    parent = multiprocessing.parent_process()
    if parent is None:  # not a multiprocessing worker: nothing to watch
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="stepprune-parent-watch", daemon=True).start()


def _worker_context() -> multiprocessing.context.BaseContext:
    """How grading workers start: from multiprocessing's fork server where the platform has
    one, else spawned.

    Never a plain fork: the run may hold CUDA state and threads, which fork copies unsafely.
    The fork server is a fresh interpreter started once per process; it imports math-verify
    and sympy and grades once (``grading_preload``), and each worker is forked from it. A run
    makes one worker, but a process that makes many (a notebook, the test suite, a worker
    restarted after a timeout) paid about 0.8 s of CPU per spawned worker; a later forked
    one starts and grades its first answer in about 0.2 s.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # Read when the fork server starts. Not multiprocessing's default "__main__": the fork
    # server imports it by path, where `python -m` and spawn would not run it again.
    context.set_forkserver_preload(["stepprune.grading_preload"])
    return context


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while processes are started (main thread only: elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        # None: a handler not set from Python, which cannot be put back; the default then.
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


def _init_worker() -> None:
    """Initializer of the grading worker (runs in it, before any task)."""
    # Ctrl-C reaches the whole process group: the parent handles it (and kills this worker);
    # here it would only print a traceback from the middle of a queue read.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    mv_logger = logging.getLogger("math_verify")
    mv_logger.addHandler(_MV_LOG)
    mv_logger.propagate = False


def _ping() -> None:
    """First task of a fresh worker: its result shows that the worker has started. It grades
    one answer, so that math-verify's one-time set-up (its LaTeX grammar, sympy's first
    comparison: about a second on a busy machine) is not charged to the first real answer's
    timeout."""
    _grade_in_worker("1", r"\boxed{1}", 5)


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers now (shutdown alone would wait for a hung task to finish)."""
    kill_workers = getattr(pool, "kill_workers", None)  # public API from Python 3.14 on
    if kill_workers is not None:
        kill_workers()
    else:
        # Before 3.14 the only handle on the workers is the private _processes mapping.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


class Grader:
    """Grades answers in a worker process with a per-answer timeout. Context manager.

    The worker is started on first use and reused; after a timeout or a crash it is killed and a
    fresh one is started on the next call. Not thread-safe: use one Grader per thread. The
    worker exits when this process dies, whatever kills it. The fork server it is forked from
    (see ``_worker_context``) stays for the life of the process, so that later workers start
    warm. ``timeouts`` counts the answers that ran out of time (graded incorrect).

    Args:
        timeout_s: seconds to wait for one answer's result; a late answer gets
            ``Grade(None, False)``. math-verify's own per-step timeouts are set to half of it,
            so that ordinary slow cases end inside math-verify and only hangs need a kill.
        _worker: the function run in the worker process; tests inject a slow or failing one.
            It must be picklable (defined at module level).
    """

    def __init__(self, timeout_s: float = 10.0, *, _worker: WorkerFn = _grade_in_worker) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.timeout_s = timeout_s
        # signal.alarm takes whole seconds, and 0 would disable math-verify's timeout.
        self._mv_timeout_s = max(1, int(timeout_s / 2))
        self._worker = _worker
        self._pool: ProcessPoolExecutor | None = None
        self.timeouts = 0

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # The processes (the fork server included) start with Ctrl-C ignored, inherited
            # through exec and fork, so that a Ctrl-C while they import prints no traceback.
            with _sigint_ignored():
                pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=_worker_context(),
                    initializer=_init_worker,
                )
                started = pool.submit(_ping)
            try:
                # Wait for the worker here so that its start-up is not charged to an answer.
                started.result(timeout=_STARTUP_TIMEOUT_S)
            except BrokenProcessPool:
                with suppress(Exception):
                    _kill_pool(pool)
                # Grading every answer "incorrect" would be a silent wrong result: stop instead.
                raise GradingError(
                    "the grading worker died while starting; if you call stepprune from a "
                    'script, put the call under `if __name__ == "__main__":` (the worker '
                    "process imports your script again)"
                ) from None
            except BaseException:
                # The original error (a Ctrl-C included) goes on, whatever the clean-up raises.
                with suppress(Exception):
                    _kill_pool(pool)
                raise
            self._pool = pool
        return self._pool

    def _discard_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            _kill_pool(pool)

    def grade(self, gold: str, answer_text: str) -> Grade:
        """Grade ``answer_text`` against ``gold``.

        Parses the gold first, then the prediction, then ``verify(gold, prediction)``. Never
        raises: a timeout or any failure gives ``Grade(None, False)``.
        """
        future: Future[Grade] | None = None
        try:
            future = self._ensure_pool().submit(self._worker, gold, answer_text, self._mv_timeout_s)
            grade = future.result(timeout=self.timeout_s)
        except GradingError:
            raise
        except TimeoutError:
            if future is None:
                logger.warning("grading timed out (worker start-up); restarting the worker")
                issue = "failed: worker start-up timed out"
            else:
                logger.warning(
                    "grading timed out (answer after %s s); restarting the worker", self.timeout_s
                )
                issue = "timeout"
        except Exception as error:
            # Includes BrokenProcessPool (the worker died, e.g. out of memory) and errors raised
            # by an injected worker: start afresh on the next call either way.
            issue = f"failed: {type(error).__name__}: {error}"
            # One line: it appears in the middle of the run's progress display.
            logger.warning("grading %s; restarting the worker", issue)
        except BaseException:
            # Interrupted (Ctrl-C) while the worker may still be busy: do not leave it running.
            self._discard_pool()
            raise
        else:
            if grade.issue == "gold not parsed":
                logger.warning("math-verify could not parse the gold answer %r", gold)
            elif grade.issue and grade.issue != "timeout":
                logger.warning("grading failed for gold %r: %s", gold, grade.issue)
            self.timeouts += grade.issue == "timeout"
            return grade
        self._discard_pool()
        self.timeouts += issue == "timeout"
        return Grade(None, False, issue=issue)

    def close(self) -> None:
        """Stop the worker process, if one is running. The Grader can still be used afterwards."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
