"""What every benchmark shares: one timer, one memory meter, one synthetic test trace.

seconds(fn, device)                  -> wall seconds of one call (CUDA synchronised)
paired_seconds(a, b, repeats, device) -> PairedTiming: per-repeat seconds of a and b
PeakMemory(device) / peak_mb(fn)     -> peak MiB above the starting level
synthetic_trace(tokenizer, tokens)   -> a Trace of exactly ``tokens`` ids, ~40-token steps
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from stepprune.planted import generate_planted
from stepprune.schema import Step, Trace

CPU = torch.device("cpu")
# The synthetic trace: this many prompt tokens, then steps of this many tokens.
SYNTHETIC_PROMPT_TOKENS = 8
SYNTHETIC_STEP_TOKENS = 40


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device = CPU) -> float:
    """Wall seconds of one call of ``fn``; on CUDA, queued kernels are waited for before the
    clock starts and before it stops, so the time is the work's, not the launch's."""
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


@dataclass(frozen=True)
class PairedTiming:
    """Seconds of two functions timed alternately: ``first[i]`` and ``second[i]`` are repeat
    ``i``. Medians summarise each; ``ratio`` is the median of per-pair ratios second/first."""

    first: tuple[float, ...]
    second: tuple[float, ...]

    @property
    def median_first(self) -> float:
        return statistics.median(self.first)

    @property
    def median_second(self) -> float:
        return statistics.median(self.second)

    @property
    def ratio(self) -> float:
        return statistics.median(b / a for a, b in zip(self.first, self.second, strict=True))


def paired_seconds(
    first: Callable[[], object],
    second: Callable[[], object],
    repeats: int,
    device: torch.device = CPU,
    clock: Callable[[Callable[[], object], torch.device], float] = seconds,
) -> PairedTiming:
    """Time ``first`` and ``second`` alternately ``repeats`` times, after one warm-up call of
    each: a background load that comes and goes hits both alike. ``clock`` measures one call
    (``seconds`` unless a test substitutes its own)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    first(), second()  # warm-up
    pairs = [(clock(first, device), clock(second, device)) for _ in range(repeats)]
    return PairedTiming(tuple(a for a, _ in pairs), tuple(b for _, b in pairs))


def _release_freed_heap() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``; elsewhere a
    no-op). Memory freed earlier in the process stays resident in the heap, and a block that
    reuses it would not raise the resident set: its peak would read as zero."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


class PeakMemory:
    """Peak memory above the starting level while the block runs, in MiB (``peak_mb``).

    CUDA: the allocator's peak. CPU: resident set size sampled every 2 ms by a thread (torch's
    CPU allocations are invisible to tracemalloc), read from ``/proc/self/statm``.
    """

    def __init__(self, device: torch.device = CPU) -> None:
        self.device = device
        self.peak_mb = 0.0

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * 4096 / 2**20

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        _release_freed_heap()
        self._start = self._rss_mb()
        self._high = self._start
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._high = max(self._high, self._rss_mb())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20 - self._start
            return
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self._high, self._rss_mb()) - self._start


def peak_mb(fn: Callable[[], object], device: torch.device = CPU) -> float:
    """Peak MiB above the starting level while ``fn`` runs (``PeakMemory``)."""
    with PeakMemory(device) as memory:
        fn()
    return memory.peak_mb


def synthetic_trace(tokenizer: PreTrainedTokenizerBase, tokens: int, seed: int = 0) -> Trace:
    """A trace of exactly ``tokens`` ids for speed and exactness benchmarks: planted reasoning
    text repeated (real text, so attention patterns are realistic), the first 8 ids as its
    prompt, the rest cut into 40-token steps (leaving 8 tokens after the last step start)."""
    text = "\n\n".join(p.reasoning or "" for p in generate_planted(40, seed))
    chunk = tokenizer.encode(text, add_special_tokens=False)
    ids = (chunk * (tokens // max(len(chunk), 1) + 1))[:tokens]
    head, size = SYNTHETIC_PROMPT_TOKENS, SYNTHETIC_STEP_TOKENS
    steps = [
        Step(index=i, start=start, end=min(start + size, tokens), text="")
        for i, start in enumerate(range(head, tokens - head, size))
    ]
    return Trace("bench", 0, ids[:head], ids[head:], head, tokens, True, True, True, False, steps)
