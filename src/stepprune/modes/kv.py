"""KV mode: answer from a pruned copy of the trace's own cache.

The cache of prompt + full reasoning is computed once per trace. For each keep mask, the entries
at the positions text mode would keep (``context.kept_positions``: prompt, kept steps and their
separators) are gathered into a copy (``KVState.gather``), optionally re-rotated to contiguous
positions (``kvcache.rerotate``, composed after the gather), the same end-of-reasoning cue as
text mode is appended (``context.closing_ids``), and the answers are decoded greedily as rows of
one padded batch (``kvcache.decode_greedy_rows``: per-row positions and validity masks, each row
leaving the batch at its own end), the same answers as one at a time. Several traces share a
batch (``kvunits``) while its padded cache fits ``batch_mib`` MiB, a run setting: it changes how
fast, not what, the mode answers. Unlike text mode, the kept entries still carry what they
computed while the pruned steps were visible, and no re-prefill is needed per threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from stepprune.context import closing_ids, kept_positions
from stepprune.decoding import StopRule
from stepprune.kvcache import FULL, POSITION_SCHEMES, layer_types
from stepprune.kvunits import DEFAULT_BATCH_MIB, UnitRows, budget_entries, decode_units, pack
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

    batches_units = True

    positions: Literal["original", "rerotate"] = "original"
    answer_max_tokens: int = run_setting(512)
    batch_mib: int = run_setting(DEFAULT_BATCH_MIB)

    def evaluate(self, session, problem: Problem, trace: Trace, prunings: Sequence[Pruning]):
        return self.evaluate_units(session, [(problem, trace, prunings)])[0]

    def evaluate_units(
        self, session, units: Sequence[tuple[Problem, Trace, Sequence[Pruning]]]
    ) -> list[list[Outcome]]:
        model, fmt = session.model, session.format
        rule = StopRule(session.tokenizer, session.eos_ids, fmt.answer_cue_text())
        place = POSITION_SCHEMES[self.positions]
        masks = [unique_masks(prunings) for _, _, prunings in units]
        rows = [
            UnitRows(
                trace.all_ids[: trace.reasoning_end],
                [kept_entries(trace, keep) for keep in unit_masks],
                [closing_ids(fmt, trace, keep) for keep in unit_masks],
            )
            for (_, trace, _), unit_masks in zip(units, masks, strict=True)
        ]
        capacity = budget_entries(model.config, model.dtype, self.batch_mib, model.device)
        answers: list[list] = [[] for _ in units]
        decoding = [u for u, unit in enumerate(rows) if unit.cues]  # a trace without masks
        for group in pack([rows[u] for u in decoding], capacity, self.answer_max_tokens):
            units_in = [decoding[g] for g in group]
            decoded = decode_units(
                model, [rows[u] for u in units_in], place, self.answer_max_tokens, rule
            )
            for u, unit_answers in zip(units_in, decoded, strict=True):
                answers[u] = unit_answers
        full_layers = FULL in layer_types(model)
        return [
            self._outcomes(trace, prunings, unit_masks, unit_rows, unit_answers, full_layers)
            for (_, trace, prunings), unit_masks, unit_rows, unit_answers in zip(
                units, masks, rows, answers, strict=True
            )
        ]

    def _outcomes(
        self, trace: Trace, prunings, masks, rows: UnitRows, answers, full_layers: bool
    ) -> list[Outcome]:
        """One outcome per pruning; prunings with the same mask share its row's answer."""
        full_tokens = trace.reasoning_end if full_layers else 0  # full-attention entries
        by_mask = {}
        for keep, entries, cue, answer in zip(masks, rows.entries, rows.cues, answers, strict=True):
            cache_tokens = int(entries.sum())
            details = {
                "positions": self.positions,
                "cache_tokens": cache_tokens,
                "full_cache_tokens": full_tokens,
            }
            by_mask[keep] = (answer, cache_tokens + len(cue), details)
        outcomes = []
        for p in prunings:
            answer, context_tokens, details = by_mask[p.keep]
            outcomes.append(Outcome(p, trace.steps, list(p.keep), answer, context_tokens, details))
        return outcomes
