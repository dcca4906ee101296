"""The forced-answer scorer: how much each step raises the reference answer's probability when
the reasoning is cut off right after it (Thought Anchors, arXiv 2506.19143).

Spec: ``forced-answer``. With ``c_j`` the text-mode re-evaluation context that keeps the first
``j`` steps (``context.text_context``: prompt, steps ``0..j-1`` with their separators, the
end-of-reasoning cue: exactly what text mode re-prompts with) and ``A_j = log p(gold | c_j)``
(the reference answer written as ``ablation.answer_target_ids``)::

    importance_i = max(A_{i+1} - A_i, 0)        i = 0 .. S-1, then normalised

A step after which the answer became *less* likely gets 0, not a negative importance (as in
``ablation``); all zeros give the uniform distribution. Cost: ``S + 1`` forwards over contexts
of up to the whole reasoning, run ``BATCH_SIZE`` at a time (left-padded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel

from stepprune.context import text_context
from stepprune.models import ChatFormat
from stepprune.schema import Trace
from stepprune.scorers.ablation import answer_target_ids
from stepprune.scorers.base import SCORERS, Scorer, normalise

BATCH_SIZE = 8


def prefix_contexts(fmt: ChatFormat, trace: Trace) -> list[list[int]]:
    """``c_0 .. c_S``: the re-evaluation context keeping the first ``j`` steps, cue included."""
    n = len(trace.steps)
    return [text_context(fmt, trace, [k < j for k in range(n)]) for j in range(n + 1)]


@torch.inference_mode()
def target_logprobs(
    model: PreTrainedModel,
    contexts: Sequence[list[int]],
    target: list[int],
    batch_size: int = BATCH_SIZE,
) -> list[float]:
    """``log p(target | context)`` for each context, ``batch_size`` sequences per forward.

    Rows are left-padded (masked, with positions counted from each row's first real token), so
    every row's target ends at the last position and ``logits_to_keep`` reads only the target.
    """
    results: list[float] = []
    width = len(target) + 1
    index = torch.tensor(target)
    for begin in range(0, len(contexts), batch_size):
        rows = [list(c) + target for c in contexts[begin : begin + batch_size]]
        length = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), length), dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, length - len(row) :] = torch.tensor(row)
            mask[i, length - len(row) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = model(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            position_ids=positions.to(model.device),
            use_cache=False,
            logits_to_keep=width,
        ).logits[:, :-1]  # (rows, len(target), vocab): the predictions of the target tokens
        logp = torch.log_softmax(logits.double(), dim=-1).cpu()
        picked = logp.gather(-1, index.expand(len(rows), -1)[..., None])[..., 0]
        results += picked.sum(-1).tolist()
    return results


@SCORERS.register("forced-answer")
@dataclass(frozen=True)
class ForcedAnswerScorer(Scorer):
    """Importance of step i = rise of log p(gold) when the reasoning stops after step i rather
    than before it, clipped at 0; see the module docstring. An oracle: it reads the reference
    answer."""

    reads_gold = True

    def answer_logprobs(
        self, model: PreTrainedModel, trace: Trace, fmt: ChatFormat, gold: str
    ) -> list[float]:
        """``A_0 .. A_S``: log p(gold) after the first j steps and the cue."""
        target = answer_target_ids(fmt, gold)
        return target_logprobs(model, prefix_contexts(fmt, trace), target)

    def score(
        self,
        model: PreTrainedModel,
        trace: Trace,
        fmt: ChatFormat,
        gold: str | None = None,
    ) -> list[float]:
        if not trace.steps:
            return []
        gold = self.gold_of(gold)
        forced = np.array(self.answer_logprobs(model, trace, fmt, gold))
        return normalise(np.clip(np.diff(forced), 0.0, None))

    def online_problem(self) -> str:
        return "it re-reads every prefix of the finished trace with the reference answer"
