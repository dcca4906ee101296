"""KV-mode re-evaluation: answer from a pruned copy of the trace's own cache.

The cache of prompt + full reasoning is computed once per trace. For each keep mask, the entries
at the positions text mode would keep (``reeval.kept_positions``: prompt, kept steps and their
separators) are gathered into a copy, the same end-of-reasoning cue is appended
(``reeval.closing_ids``), and the answer is decoded greedily. Unlike text mode, the kept
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
from stepprune.reeval import Answer, closing_ids, has_closed_box, kept_positions
from stepprune.schema import Trace


@dataclass(frozen=True)
class KVAnswer:
    """An answer, the size of the cache it was decoded from (entries before the cue), and of
    the whole context (cache and cue)."""

    answer: Answer
    cache_tokens: int
    full_cache_tokens: int
    context_tokens: int


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
    """``(reasoning_end,)`` bool over prompt + reasoning positions: True where text mode keeps
    the token (``kept_positions``), False on pruned steps and the separators they leave."""
    mask = torch.zeros(trace.reasoning_end, dtype=torch.bool)
    mask[kept_positions(trace, keep)] = True
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
    results = []
    for keep in masks:
        pruned = full.gather(kept_entries(trace, keep), scheme, model)
        cache_tokens = pruned.length
        cue = closing_ids(fmt, trace, keep)
        answer = decode_greedy(model, pruned, cue, max_new_tokens, eos_ids, fmt)
        results.append(KVAnswer(answer, cache_tokens, full.length, cache_tokens + len(cue)))
    return results
