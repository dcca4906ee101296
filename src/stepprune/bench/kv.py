"""``stepprune bench kv``: speed, memory and exactness of KV-cache pruning at length N.

In one run on one model: the time to re-evaluate six thresholds from a pruned cache (``kv``) divided
by re-prompting with the kept text (``text``); the time of kv mode's batched re-evaluation (every
keep mask a row of one batch) divided by the same masks one at a time, both from the same prefilled
cache (the prefill is one forward per trace on either path, so it is timed once, apart, as
``seconds_prefill``), with a check that the answers are identical; the time of a decode step with
the preallocated cache (``GrowLayer``) divided by one with transformers' ``torch.cat`` cache at
batch 1 and 8; the peak cache of online pruning at a 50% budget divided by the peak without
eviction; decode speed with a pruned and a full cache; and the largest logit differences of the two
exactness checks (evict nothing vs the unpruned continuation, evict a set vs an explicit mask that
hides it).

Both re-evaluations decode exactly ``answer_tokens`` per threshold (no end-of-sequence token, no
stop at a complete box), so they do the same work and the ratio compares the two ways of
building the context only.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from stepprune.bench import KV_MIN_TOKENS
from stepprune.bench.common import paired_seconds, seconds, synthetic_trace
from stepprune.context import closing_ids, text_context
from stepprune.decoding import Continuation, SamplingConfig, StopRule
from stepprune.engines import HFEngine
from stepprune.kvcache import (
    FULL,
    SLIDING,
    KVState,
    RowBatch,
    decode_greedy,
    decode_greedy_rows,
    prefill,
)
from stepprune.modes.kv import kept_entries
from stepprune.modes.online import OnlineConfig, OnlinePruner
from stepprune.schema import Trace
from stepprune.session import Session

THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
EXACTNESS_TOKENS = 2048
# Online pruning scores cached steps with the probe's attention at each checkpoint.
ONLINE_SCORER = "attention:query=probe"
ONLINE_INTERVAL, ONLINE_RECENT = 256, 64


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
    kv_batched_over_unbatched: float
    kv_batched_identical: bool
    seconds_kv_batched: float
    seconds_kv_unbatched: float
    seconds_prefill: float
    grow_over_cat_batch1: float
    grow_over_cat_batch8: float
    online_peak_cache_tokens: int
    full_cache_tokens: int
    exactness_tokens: int
    device: str

    def to_json(self) -> dict:
        return asdict(self)


def _decode_tps(model: PreTrainedModel, state: KVState, tokens: int) -> float:
    """Greedy decode speed from ``state`` (tokens per second, prefill excluded)."""
    logits = [state.forward(model, [1])[-1]]

    def decode() -> None:
        for _ in range(tokens):
            logits[0] = state.forward(model, [int(torch.argmax(logits[0]))])[-1]

    return tokens / seconds(decode, model.device)


def _mask_diffs(model: PreTrainedModel, ids: list[int], evict: list[int]) -> tuple[float, float]:
    """Max |logit difference| for evicting nothing and for evicting ``evict`` (original
    positions), against one forward pass with an explicit mask."""
    cue = ids[-4:]
    prefix = ids[:-4]
    state, _ = prefill(model, prefix)
    keep = torch.ones(len(prefix), dtype=torch.bool)
    noop = state.gather(keep).forward(model, cue, len(cue))
    keep[evict] = False
    pruned = state.gather(keep).forward(model, cue, len(cue))
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


def _kv_answers(
    session: Session,
    trace: Trace,
    masks: Sequence[Sequence[bool]],
    answer_tokens: int,
    full: KVState | None = None,
) -> list[Continuation]:
    """KV mode's re-evaluation (one prefill, unless ``full`` is that prefilled cache; then per
    mask: gather, cue, greedy decode) with a stop rule that never stops, so every answer is
    ``answer_tokens`` long."""
    never = StopRule(session.tokenizer, [], box_prefix=None)
    if full is None:
        full, _ = prefill(session.model, trace.all_ids[: trace.reasoning_end])
    return [
        decode_greedy(
            session.model,
            full.gather(kept_entries(trace, keep)),
            closing_ids(session.format, trace, keep),
            answer_tokens,
            never,
        )
        for keep in masks
    ]


def _kv_answers_batched(
    session: Session,
    trace: Trace,
    masks: Sequence[Sequence[bool]],
    answer_tokens: int,
    full: KVState,
) -> list[Continuation]:
    """``_kv_answers`` from the prefilled cache ``full``, every mask a row of one batch
    (``decode_greedy_rows``)."""
    never = StopRule(session.tokenizer, [], box_prefix=None)
    model = session.model
    entries = [kept_entries(trace, keep) for keep in masks]
    lengths = {kind: [len(p)] * len(masks) for kind, p in full.positions.items()}
    lengths[FULL] = [int(e.sum()) for e in entries]
    cues = [closing_ids(session.format, trace, keep) for keep in masks]
    states = (full.gather(e) for e in entries)
    return decode_greedy_rows(model, states, lengths, cues, answer_tokens, never)


def _grow_over_cat(model: PreTrainedModel, full: KVState, rows: int, steps: int) -> float:
    """Median over 3 alternating repeats of: seconds of ``steps`` decode steps at ``rows`` rows
    of ``full`` with the preallocated cache, over the same with ``torch.cat`` layers."""
    length = {kind: len(p) for kind, p in full.positions.items()}

    def batch(cat: bool) -> RowBatch:
        made = RowBatch(model, (full for _ in range(rows)), rows, length)
        if cat:  # the same entries in transformers' own layers
            cache = DynamicCache()
            for i, layer in enumerate(made.cache.layers):
                cache.update(layer.keys.clone(), layer.values.clone(), i)
            made.cache = cache
        return made

    def run(made: RowBatch) -> None:
        for _ in range(steps):
            made.forward([[1]] * rows)

    ratios = []
    for _ in range(3):
        grow, cat = batch(False), batch(True)
        grow_s = seconds(lambda b=grow: run(b), model.device)
        ratios.append(grow_s / seconds(lambda b=cat: run(b), model.device))
    return statistics.median(ratios)


def _online_peak(session: Session, trace: Trace, budget: int | None) -> int:
    """Peak full-attention cache while the trace's reasoning is teacher-forced online, with
    eviction down to ``budget`` entries at every checkpoint (None: no eviction)."""
    config = OnlineConfig(
        session.policy, budget=budget, interval=ONLINE_INTERVAL, recent=ONLINE_RECENT
    )
    forced = trace.all_ids[len(trace.prompt_ids) : trace.reasoning_end]
    sampling = SamplingConfig(max_new_tokens=1, temperature=0.0)
    result = OnlinePruner(session, config).run(
        trace.prompt_ids, sampling, 0, forced, answer_max_tokens=1
    )
    return result.peak_cache_tokens


def run_kv_bench(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tokens: int,
    answer_tokens: int = 16,
    decode_tokens: int = 32,
) -> KVBench:
    """Measure on a ``tokens``-long planted-text trace (``bench.common.synthetic_trace``)."""
    if tokens < KV_MIN_TOKENS:
        raise ValueError(f"--tokens must be >= {KV_MIN_TOKENS}, got {tokens}")
    session = Session(model, tokenizer, scorer=ONLINE_SCORER, policy="percentile")
    device = model.device
    trace = synthetic_trace(tokenizer, tokens)
    scores = np.random.default_rng(0).random(len(trace.steps))
    masks = list(dict.fromkeys(session.keep_masks(scores, THRESHOLDS)))
    # No end-of-sequence: the text engine decodes exactly ``answer_tokens`` per threshold.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    text_engine = HFEngine(model, tokenizer, [], pad_id)

    def text_mode() -> object:
        contexts = [text_context(session.format, trace, keep) for keep in masks]
        return text_engine.greedy(contexts, answer_tokens, box_prefix=None)

    seconds_text = seconds(text_mode, device)
    seconds_kv = seconds(lambda: _kv_answers(session, trace, masks, answer_tokens), device)
    # Batched vs one at a time from one prefilled cache (neither path changes it), timed
    # alternately in this process: the prefill is the same single forward on both paths, and
    # at a few answer tokens per mask it would swamp the difference batching makes.
    prefilled: list[KVState] = []
    seconds_prefill = seconds(
        lambda: prefilled.append(prefill(model, trace.all_ids[: trace.reasoning_end])[0]),
        device,
    )
    answers: dict[str, list] = {}
    timing = paired_seconds(
        lambda: answers.__setitem__(
            "one", _kv_answers(session, trace, masks, answer_tokens, prefilled[0])
        ),
        lambda: answers.__setitem__(
            "rows", _kv_answers_batched(session, trace, masks, answer_tokens, prefilled[0])
        ),
        2,
        device,
    )

    full, _ = prefill(model, trace.all_ids)
    grow_1 = _grow_over_cat(model, full, 1, decode_tokens)
    grow_8 = _grow_over_cat(model, full, 8, decode_tokens)
    (half,) = session.keep_masks(scores, [0.5])
    pruned = full.gather(kept_entries(trace, half))
    tps_pruned = _decode_tps(model, pruned, decode_tokens)
    tps_full = _decode_tps(model, full, decode_tokens)

    peak_full = _online_peak(session, trace, None)
    peak_half = _online_peak(session, trace, tokens // 2)

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
        kv_batched_over_unbatched=timing.ratio,
        kv_batched_identical=answers["one"] == answers["rows"],
        seconds_kv_batched=timing.median_second,
        seconds_kv_unbatched=timing.median_first,
        seconds_prefill=seconds_prefill,
        grow_over_cat_batch1=grow_1,
        grow_over_cat_batch8=grow_8,
        online_peak_cache_tokens=peak_half,
        full_cache_tokens=peak_full,
        exactness_tokens=exact_len,
        device=str(device),
    )
