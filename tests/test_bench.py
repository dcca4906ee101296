"""Tests of stepprune.bench.common (timer, memory meter, synthetic trace) and smoke runs of the
scoring and kv benchmarks on a tiny model."""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from stepprune.bench.common import (
    PairedTiming,
    PeakMemory,
    paired_seconds,
    peak_mb,
    seconds,
    synthetic_trace,
)
from stepprune.bench.kv import run_kv_bench
from stepprune.bench.scoring import run_scoring_bench
from tests.conftest import tiny_model

MIB = 2**20

# -- timer ------------------------------------------------------------------------------------


def test_paired_timing_has_one_number_per_repeat_and_pairs_them_in_order() -> None:
    calls: list[str] = []
    ticks = itertools.count(1)

    def fake_clock(fn, device) -> float:
        fn()
        return float(next(ticks))  # 1, 2, 3, ...: first gets odd, second even numbers

    timing = paired_seconds(
        lambda: calls.append("a"), lambda: calls.append("b"), 3, clock=fake_clock
    )
    assert calls == ["a", "b"] * 4  # one warm-up each, then alternately
    assert timing == PairedTiming(first=(1.0, 3.0, 5.0), second=(2.0, 4.0, 6.0))
    assert (timing.median_first, timing.median_second) == (3.0, 4.0)
    assert timing.ratio == pytest.approx(4.0 / 3.0)  # median of 2/1, 4/3, 6/5


def test_paired_timing_with_the_real_clock() -> None:
    timing = paired_seconds(lambda: None, lambda: sum(range(100)), 4)
    assert len(timing.first) == len(timing.second) == 4
    assert all(t >= 0 for t in timing.first + timing.second)
    assert seconds(lambda: None) >= 0
    with pytest.raises(ValueError, match="repeats"):
        paired_seconds(lambda: None, lambda: None, 0)


# -- memory meter -----------------------------------------------------------------------------


def test_peak_memory_sees_an_allocation_held_through_the_block() -> None:
    with PeakMemory() as memory:
        block = torch.ones(32 * MIB)  # 128 MiB of float32, every page written
    assert memory.peak_mb >= 0.9 * block.numel() * 4 / MIB


def test_peak_memory_sees_an_allocation_where_freed_memory_stays_resident() -> None:
    """Many 256 KiB blocks freed: they stay resident in the C heap, and a 128 MiB block can
    reuse them without raising the resident set (the meter read 0.004 MiB; whether a test
    process had done so before depended on which tests it ran)."""
    blocks = [torch.ones(64 * 1024) for _ in range(3000)]  # 750 MiB in the heap
    del blocks
    with PeakMemory() as memory:
        block = torch.ones(32 * MIB)
    assert memory.peak_mb >= 0.9 * block.numel() * 4 / MIB


def test_peak_memory_sees_an_allocation_freed_inside_the_block() -> None:
    def allocate_and_free() -> None:
        block = torch.ones(32 * MIB)
        time.sleep(0.05)  # the sampler reads every 2 ms: let it see the block
        del block

    assert peak_mb(allocate_and_free) >= 0.9 * 128


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_peak_memory_on_cuda() -> None:
    device = torch.device("cuda")

    def allocate_and_free() -> None:
        block = torch.ones(32 * MIB, device=device)
        del block

    assert peak_mb(allocate_and_free, device) >= 128


# -- synthetic trace --------------------------------------------------------------------------


def test_synthetic_trace_has_exactly_n_tokens_and_40_token_steps(r1_tokenizer) -> None:
    trace = synthetic_trace(r1_tokenizer, 300)
    assert len(trace.all_ids) == 300 and trace.reasoning_end == 300
    assert trace.prompt_ids == trace.all_ids[:8] and trace.reasoning_start == 8
    assert [s.start for s in trace.steps] == list(range(8, 292, 40))
    assert all(s.num_tokens == 40 for s in trace.steps[:-1]) and trace.steps[-1].end == 300
    assert [s.index for s in trace.steps] == list(range(len(trace.steps)))
    assert synthetic_trace(r1_tokenizer, 300).all_ids == trace.all_ids  # deterministic


# -- smoke runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_r1_tokenizer):
    """A tiny random Qwen2 over the R1 tokenizer retrained to a small vocabulary (conftest's
    ``small_vocabulary``): the benches count forwards and rows, which the vocabulary does not
    change, and sampling over 151,936 tokens took most of their time."""
    tokenizer = tiny_r1_tokenizer
    model = tiny_model("qwen2", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


@pytest.mark.e2e
def test_scoring_bench_matches_eager(tiny) -> None:
    result = run_scoring_bench(*tiny, tokens=96, repeats=1)
    assert result.tokens == 96 and result.device == "cpu"
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-5
    assert result.scoring_over_forward > 0 and result.seconds_eager is not None
    assert tiny[0].config._attn_implementation == "sdpa"  # eager was switched back
    skipped = run_scoring_bench(*tiny, tokens=64, repeats=1, eager_limit_gb=0.0)
    assert skipped.max_abs_diff is None and skipped.eager_over_scoring is None
    with pytest.raises(ValueError, match="tokens"):
        run_scoring_bench(*tiny, tokens=32)


@pytest.mark.e2e
def test_kv_bench_is_exact_and_the_budget_lowers_the_peak(tiny) -> None:
    result = run_kv_bench(*tiny, tokens=384, answer_tokens=2, decode_tokens=2)
    assert result.max_logit_diff_noop < 1e-4 and result.max_logit_diff_mask < 1e-4
    assert result.full_cache_tokens >= 384  # no eviction: the whole trace (and the cue)
    assert result.online_peak_cache_tokens < result.full_cache_tokens
    assert result.online_peak_cache_ratio < 1
    assert result.seconds_text > 0 and result.seconds_kv > 0
    assert result.exactness_tokens == 384
    with pytest.raises(ValueError, match="tokens"):
        run_kv_bench(*tiny, tokens=64)


@pytest.mark.e2e
def test_kv_bench_batched_answers_are_identical(tiny) -> None:
    result = run_kv_bench(*tiny, tokens=256, answer_tokens=3, decode_tokens=2)
    assert result.kv_batched_identical
    assert result.kv_batched_over_unbatched > 0 and result.seconds_kv_batched > 0
    assert result.grow_over_cat_batch1 > 0 and result.grow_over_cat_batch8 > 0
