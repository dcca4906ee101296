"""``stepprune bench scoring``: exactness, speed and memory of attention scoring at length N.

In one run on one model it measures: the largest absolute difference between captured scores and
eager ``output_attentions`` (where eager fits), the time of scoring over a plain forward pass,
the time of eager over scoring, and the peak memory of each. Timings are medians of repeats.
"""

from __future__ import annotations

import gc
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from stepprune.planted import generate_planted
from stepprune.schema import Step, Trace
from stepprune.scorers.attention import key_buckets, step_attention_mass

# Eager keeps layers x heads x N x N float32 weights; skip it above this estimate.
DEFAULT_EAGER_LIMIT_GB = 8.0


@dataclass
class ScoringBench:
    """JSON keys of ``stepprune bench scoring --json``."""

    tokens: int
    max_abs_diff: float | None
    scoring_over_forward: float
    eager_over_scoring: float | None
    peak_mb_scoring: float
    peak_mb_eager: float | None
    peak_mb_forward: float
    seconds_forward: float
    seconds_scoring: float
    seconds_eager: float | None
    device: str

    def to_json(self) -> dict:
        return asdict(self)


class PeakMemory:
    """Peak memory above the starting level while the block runs, in MiB.

    CUDA: the allocator's peak. CPU: resident set size sampled every 2 ms by a thread (torch's
    CPU allocations are invisible to tracemalloc).
    """

    def __init__(self, device: torch.device) -> None:
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


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _peak_mb(fn: Callable[[], object], device: torch.device) -> float:
    with PeakMemory(device) as memory:
        fn()
    return memory.peak_mb


def _paired_times(
    first: Callable[[], object], second: Callable[[], object], repeats: int, device: torch.device
) -> tuple[float, float, float]:
    """Median seconds of each and the median of per-pair ratios second/first.

    The two are timed alternately, so a background load that comes and goes hits both alike.
    """
    first(), second()  # warm-up
    pairs = [(_seconds(first, device), _seconds(second, device)) for _ in range(repeats)]
    ratio = statistics.median(b / a for a, b in pairs)
    return statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs), ratio


def benchmark_trace(tokenizer: PreTrainedTokenizerBase, tokens: int, seed: int = 0) -> Trace:
    """A trace of exactly ``tokens`` ids: planted reasoning text repeated, cut into ~40-token
    steps (real text, so attention patterns are realistic)."""
    text = "\n\n".join(p.reasoning or "" for p in generate_planted(40, seed))
    chunk = tokenizer.encode(text, add_special_tokens=False)
    ids = (chunk * (tokens // max(len(chunk), 1) + 1))[:tokens]
    steps = [
        Step(index=i, start=start, end=min(start + 40, tokens), text="")
        for i, start in enumerate(range(8, tokens - 8, 40))
    ]
    return Trace("bench", 0, ids[:8], ids[8:], 8, tokens, True, True, True, False, steps)


def run_scoring_bench(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tokens: int,
    repeats: int = 5,
    eager_limit_gb: float = DEFAULT_EAGER_LIMIT_GB,
) -> ScoringBench:
    """Measure last-token step scoring (the default attention scorer) at ``tokens`` tokens."""
    if tokens < 64:
        raise ValueError(f"--tokens must be >= 64, got {tokens}")
    device = model.device
    trace = benchmark_trace(tokenizer, tokens)
    ids = trace.all_ids
    input_ids = torch.tensor([ids], device=device)
    buckets, num_buckets = key_buckets(trace, len(ids), sink_tokens=0)

    def forward() -> None:
        with torch.inference_mode():
            model(input_ids=input_ids, use_cache=False, logits_to_keep=1)

    def scoring() -> torch.Tensor:
        return step_attention_mass(model, ids, [len(ids) - 1], buckets, num_buckets)

    seconds_forward, seconds_scoring, scoring_over_forward = _paired_times(
        forward, scoring, repeats, device
    )
    peak_forward, peak_scoring = _peak_mb(forward, device), _peak_mb(scoring, device)

    config = model.config
    eager_gb = config.num_hidden_layers * config.num_attention_heads * tokens**2 * 4 / 2**30
    max_abs_diff = seconds_eager = peak_eager = None
    if eager_gb <= eager_limit_gb:
        captured = scoring()
        result: dict[str, tuple] = {}

        def eager() -> None:
            config._attn_implementation = "eager"
            try:
                with torch.inference_mode():
                    result["attn"] = model(input_ids=input_ids, output_attentions=True).attentions
            finally:
                config._attn_implementation = "sdpa"

        eager()  # warm-up
        seconds_eager = _seconds(eager, device)
        peak_eager = _peak_mb(eager, device)
        last_rows = torch.stack([a[0, :, -1, :].float() for a in result.pop("attn")]).cpu()
        reference = torch.zeros(last_rows.shape[:2] + (num_buckets,)).index_add_(
            2, buckets, last_rows
        )
        max_abs_diff = float((captured[:, :, 0, :] - reference).abs().max())
    return ScoringBench(
        tokens=tokens,
        max_abs_diff=max_abs_diff,
        scoring_over_forward=scoring_over_forward,
        eager_over_scoring=None if seconds_eager is None else seconds_eager / seconds_scoring,
        peak_mb_scoring=peak_scoring,
        peak_mb_eager=peak_eager,
        peak_mb_forward=peak_forward,
        seconds_forward=seconds_forward,
        seconds_scoring=seconds_scoring,
        seconds_eager=seconds_eager,
        device=str(device),
    )
