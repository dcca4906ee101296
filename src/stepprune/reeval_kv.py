"""KV-mode re-evaluation: answer from a pruned copy of the trace's own cache.

The cache of prompt + full reasoning is computed once per trace. For each keep mask, the kept
steps' entries (plus prompt and separators, which are never steps) are gathered into a copy, the
end-of-reasoning cue is appended, and the answer is decoded greedily. Unlike text mode, the kept
entries still carry what they computed while the pruned steps were visible, and no re-prefill is
needed per threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from stepprune.kvcache import KVState, prefill
from stepprune.models import ChatFormat
from stepprune.reeval import Answer, has_closed_box
from stepprune.schema import Trace


@dataclass(frozen=True)
class KVAnswer:
    """An answer and the size of the cache it was decoded from (entries before the cue)."""

    answer: Answer
    cache_tokens: int
    full_cache_tokens: int


@torch.inference_mode()
def decode_greedy(
    model: PreTrainedModel,
    state: KVState,
    cue: list[int],
    max_new_tokens: int,
    eos_ids: Sequence[int],
    fmt: ChatFormat,
) -> Answer:
    """Append ``cue`` to the cache and decode greedily until an end-of-sequence token, a complete
    ``\\boxed{}`` (after the format's answer cue text), or the budget."""
    logits = state.forward(model, cue)[-1]
    ids: list[int] = []
    prefix = fmt.answer_cue_text()
    for _ in range(max_new_tokens):
        token = int(torch.argmax(logits))
        if token in eos_ids:
            return Answer(ids=ids, truncated=False)
        ids.append(token)
        if has_closed_box(prefix + fmt.tokenizer.decode(ids)):
            return Answer(ids=ids, truncated=False)
        logits = state.forward(model, [token])[-1]
    return Answer(ids=ids, truncated=True)


def kept_entries(trace: Trace, keep: Sequence[bool]) -> torch.Tensor:
    """``(reasoning_end,)`` bool over prompt + reasoning positions: False on pruned steps."""
    mask = torch.ones(trace.reasoning_end, dtype=torch.bool)
    for step, kept in zip(trace.steps, keep, strict=True):
        if not kept:
            mask[step.start : step.end] = False
    return mask


def kv_answers(
    model: PreTrainedModel,
    fmt: ChatFormat,
    trace: Trace,
    masks: list[Sequence[bool]],
    scheme: str,
    max_new_tokens: int,
    eos_ids: Sequence[int],
) -> list[KVAnswer]:
    """One answer per keep mask, all from one prefill of ``prompt + reasoning``."""
    full, _ = prefill(model, trace.all_ids[: trace.reasoning_end])
    cue = fmt.answer_cue_ids()
    results = []
    for keep in masks:
        entries = kept_entries(trace, keep)
        pruned = full.gather(entries, scheme, model)
        cache_tokens = pruned.length
        answer = decode_greedy(model, pruned, cue, max_new_tokens, eos_ids, fmt)
        results.append(KVAnswer(answer, cache_tokens, full.length))
    return results
