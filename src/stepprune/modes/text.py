"""Text mode: the model answers again from the prompt and the kept steps, re-prompted.

The context of each keep mask is ``context.text_context``: the trace's own prompt ids, the kept
steps with their separators, and the end-of-reasoning cue. Answers are greedy, through the
session's engine, stopping at the first complete ``\\boxed{}``; or, with an engine that
batches across units (vLLM), ``contexts`` of many units are answered together by the run's
driver and ``outcomes`` made from the answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stepprune.context import text_context
from stepprune.decoding import Continuation
from stepprune.modes.base import MODES, Mode, Outcome, Pruning, unique_masks
from stepprune.registry import run_setting
from stepprune.schema import Problem, Trace


@MODES.register("text")
@dataclass
class TextMode(Mode):
    """Re-prompt with the kept steps; ``answer_max_tokens`` bounds each answer."""

    answer_max_tokens: int = run_setting(512)
    answers_from_contexts = True

    def contexts(
        self, session, trace: Trace, prunings: Sequence[Pruning]
    ) -> tuple[list[tuple[bool, ...]], list[list[int]]]:
        """The distinct keep masks of ``prunings`` and the context (token ids) of each."""
        masks = unique_masks(prunings)
        return masks, [text_context(session.format, trace, mask) for mask in masks]

    def outcomes(
        self,
        trace: Trace,
        prunings: Sequence[Pruning],
        masks: Sequence[tuple[bool, ...]],
        contexts: Sequence[list[int]],
        answers: Sequence[Continuation],
    ) -> list[Outcome]:
        """One outcome per pruning, from the answer to its mask's context."""
        by_mask = {
            mask: (answer, len(context))
            for mask, context, answer in zip(masks, contexts, answers, strict=True)
        }
        return [Outcome(p, trace.steps, list(p.keep), *by_mask[p.keep]) for p in prunings]

    def evaluate(self, session, problem: Problem, trace: Trace, prunings: Sequence[Pruning]):
        masks, contexts = self.contexts(session, trace, prunings)
        answers = session.engine.greedy(
            contexts, self.answer_max_tokens, box_prefix=session.format.answer_cue_text()
        )
        return self.outcomes(trace, prunings, masks, contexts, answers)
