"""KV mode: answer from a pruned copy of the trace's own cache.

The cache of prompt + full reasoning is computed once per trace. For each keep mask, the entries
at the positions text mode would keep (``context.kept_positions``: prompt, kept steps and their
separators) are gathered into a copy (``KVState.gather``), optionally re-rotated to contiguous
positions (``kvcache.rerotate``, composed after the gather), the same end-of-reasoning cue as
text mode is appended (``context.closing_ids``), and the answers of all keep masks are decoded
greedily as rows of one padded batch (``kvcache.decode_greedy_rows``: per-row positions and
validity masks, each row leaving the batch at its own end), the same answers as one at a time.
Unlike text mode, the kept entries still carry what they computed while the pruned steps were
visible, and no re-prefill is needed per threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from stepprune.context import closing_ids, kept_positions
from stepprune.decoding import StopRule
from stepprune.kvcache import FULL, POSITION_SCHEMES, decode_greedy_rows, prefill
from stepprune.modes.base import MODES, Mode, Outcome, Pruning, unique_masks
from stepprune.registry import run_setting
from stepprune.schema import Problem, Trace


def kept_entries(trace: Trace, keep: Sequence[bool]) -> torch.Tensor:
    """``(reasoning_end,)`` bool over prompt + reasoning positions: True where text mode keeps
    the token (``kept_positions``), False on pruned steps and the separators they leave."""
    mask = torch.zeros(trace.reasoning_end, dtype=torch.bool)
    mask[kept_positions(trace, keep)] = True
    return mask


@MODES.register("kv")
@dataclass
class KVMode(Mode):
    """Answer from the gathered cache; ``positions`` is ``original`` (gaps) or ``rerotate``."""

    positions: Literal["original", "rerotate"] = "original"
    answer_max_tokens: int = run_setting(512)

    def evaluate(self, session, problem: Problem, trace: Trace, prunings: Sequence[Pruning]):
        model, fmt = session.model, session.format
        rule = StopRule(session.tokenizer, session.eos_ids, fmt.answer_cue_text())
        place = POSITION_SCHEMES[self.positions]
        full, _ = prefill(model, trace.all_ids[: trace.reasoning_end])
        masks = unique_masks(prunings)
        entries = [kept_entries(trace, keep) for keep in masks]
        cues = [closing_ids(fmt, trace, keep) for keep in masks]
        lengths = {kind: [len(p)] * len(masks) for kind, p in full.positions.items()}
        lengths[FULL] = [int(e.sum()) for e in entries]
        # Every keep mask is a row of one batch; each pruned copy is made, copied in, dropped.
        states = (place(full.gather(e), model) for e in entries)
        answers = decode_greedy_rows(model, states, lengths, cues, self.answer_max_tokens, rule)
        by_mask = {}
        for keep, cache_tokens, cue, answer in zip(
            masks, lengths[FULL], cues, answers, strict=True
        ):
            details = {
                "positions": self.positions,
                "cache_tokens": cache_tokens,
                "full_cache_tokens": full.length,
            }
            by_mask[keep] = (answer, cache_tokens + len(cue), details)
        outcomes = []
        for p in prunings:
            answer, context_tokens, details = by_mask[p.keep]
            outcomes.append(Outcome(p, trace.steps, list(p.keep), answer, context_tokens, details))
        return outcomes
