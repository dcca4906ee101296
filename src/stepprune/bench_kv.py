"""``stepprune bench kv``: speed, memory and exactness of KV-cache pruning at length N.

In one run on one model: the time to re-evaluate six thresholds from a pruned cache (``kv``)
divided by re-prompting with the kept text (``text``); the peak cache of online pruning at a 50%
budget divided by the peak without eviction; decode speed with a pruned and a full cache; and
the largest logit differences of the two exactness checks (evict nothing vs the unpruned
continuation, evict a set vs an explicit mask that hides it).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from stepprune.bench_scoring import benchmark_trace
from stepprune.generation import SamplingConfig
from stepprune.kvcache import FULL, SLIDING, KVState, prefill
from stepprune.models import ChatFormat
from stepprune.online import OnlineConfig, OnlinePruner
from stepprune.pruning import POLICIES
from stepprune.reeval import generate_answers, text_context
from stepprune.reeval_kv import kept_entries, kv_answers

THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
EXACTNESS_TOKENS = 2048


@dataclass
class KVBench:
    """JSON keys of ``stepprune bench kv --json``."""

    tokens: int
    kv_over_text: float
    online_peak_cache_ratio: float
    decode_tps_pruned: float
    decode_tps_full: float
    max_logit_diff_noop: float
    max_logit_diff_mask: float
    seconds_text: float
    seconds_kv: float
    online_peak_cache_tokens: int
    full_cache_tokens: int
    exactness_tokens: int
    device: str

    def to_json(self) -> dict:
        return asdict(self)


def _seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _decode_tps(model: PreTrainedModel, state: KVState, tokens: int) -> float:
    """Greedy decode speed from ``state`` (tokens per second, prefill excluded)."""
    logits = state.forward(model, [1])[-1]
    start = time.perf_counter()
    for _ in range(tokens):
        logits = state.forward(model, [int(torch.argmax(logits))])[-1]
    return tokens / (time.perf_counter() - start)


def _mask_diffs(model: PreTrainedModel, ids: list[int], evict: list[int]) -> tuple[float, float]:
    """Max |logit difference| for evicting nothing and for evicting ``evict`` (original
    positions), against one forward pass with an explicit mask."""
    cue = ids[-4:]
    prefix = ids[:-4]
    state, _ = prefill(model, prefix)
    keep = torch.ones(len(prefix), dtype=torch.bool)
    noop = state.gather(keep, "original", model).forward(model, cue, len(cue))
    keep[evict] = False
    pruned = state.gather(keep, "original", model).forward(model, cue, len(cue))
    n = len(ids)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    diffs = []
    for logits, hidden in ((noop, []), (pruned, evict)):
        full = causal.clone()
        full[len(prefix) :, hidden] = False
        masks = {FULL: full[None, None].to(model.device)}
        if SLIDING in state.types:
            pos = torch.arange(n)
            window = causal & (pos[None] > pos[:, None] - state.window)
            masks[SLIDING] = window[None, None].to(model.device)
        mask = masks if len(masks) > 1 else masks[FULL]
        with torch.inference_mode():
            reference = (
                model(
                    torch.tensor([ids], device=model.device),
                    attention_mask=mask,
                    logits_to_keep=len(cue),
                )
                .logits[0]
                .float()
            )
        diffs.append(float((logits - reference).abs().max()))
    return diffs[0], diffs[1]


def run_kv_bench(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tokens: int,
    answer_tokens: int = 16,
    decode_tokens: int = 32,
) -> KVBench:
    """Measure on a ``tokens``-long planted-text trace (see ``bench_scoring.benchmark_trace``)."""
    if tokens < 128:
        raise ValueError(f"--tokens must be >= 128, got {tokens}")
    fmt = ChatFormat.from_tokenizer(tokenizer)
    trace = benchmark_trace(tokenizer, tokens)
    scores = np.random.default_rng(0).random(len(trace.steps))
    policy = POLICIES.build("percentile")
    masks = list(dict.fromkeys(tuple(policy.keep(scores, t)) for t in THRESHOLDS))
    # No end-of-sequence: both modes decode exactly ``answer_tokens`` per threshold.
    no_eos: list[int] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def text_mode() -> object:
        contexts = [text_context(fmt, trace, m) for m in masks]
        return generate_answers(model, contexts, answer_tokens, pad, no_eos)

    def kv_mode() -> object:
        return kv_answers(
            model, fmt, trace, [list(m) for m in masks], "original", answer_tokens, no_eos
        )

    seconds_text, _ = _seconds(text_mode)
    seconds_kv, _ = _seconds(kv_mode)

    full, _ = prefill(model, trace.all_ids)
    half = policy.keep(scores, 0.5)
    entries = kept_entries(trace, half)
    pruned = full.gather(entries[: full.length], "original", model)
    tps_pruned = _decode_tps(model, pruned, decode_tokens)
    tps_full = _decode_tps(model, full, decode_tokens)

    forced = trace.all_ids[len(trace.prompt_ids) : trace.reasoning_end]
    sampling = SamplingConfig(max_new_tokens=1, temperature=0.0)

    def online_peak(budget: int | None) -> int:
        config = OnlineConfig(policy=policy, budget=budget, interval=256, recent=64)
        pruner = OnlinePruner(model, fmt, config, no_eos)
        return pruner.run(
            trace.prompt_ids, sampling, 0, forced, answer_max_tokens=1
        ).peak_cache_tokens

    peak_full = online_peak(None)
    peak_half = online_peak(tokens // 2)

    # The masked reference materialises an N x N mask: check exactness on the first 2048 tokens.
    exact_len = min(tokens, EXACTNESS_TOKENS)
    evict = [i for s in trace.steps[1::3] for i in range(s.start, s.end) if i < exact_len - 4]
    noop_diff, mask_diff = _mask_diffs(model, trace.all_ids[:exact_len], evict)
    return KVBench(
        tokens=tokens,
        kv_over_text=seconds_kv / seconds_text,
        online_peak_cache_ratio=peak_half / peak_full,
        decode_tps_pruned=tps_pruned,
        decode_tps_full=tps_full,
        max_logit_diff_noop=noop_diff,
        max_logit_diff_mask=mask_diff,
        seconds_text=seconds_text,
        seconds_kv=seconds_kv,
        online_peak_cache_tokens=peak_half,
        full_cache_tokens=peak_full,
        exactness_tokens=exact_len,
        device=str(model.device),
    )
