"""The ablation scorer: how much the reference answer's log-probability drops without a step.

The expensive reference that attention scorers are compared with. The context is the text-mode
re-evaluation context with every step kept (``context.text_context``) followed by the reference
answer; removing step i gives the same context without that step. The cache of the shared prefix
is reused: the full context is run once, then for i = last .. first the cache is cropped back to
where step i starts and only the rest (the later steps, the cue and the answer) is run again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from stepprune.context import text_context
from stepprune.models import ChatFormat
from stepprune.schema import Trace
from stepprune.scorers.base import SCORERS, Scorer, normalise


def answer_target_ids(fmt: ChatFormat, gold: str) -> list[int]:
    """Token ids of the reference answer written after the re-evaluation cue."""
    if fmt.is_thinking:
        return fmt.encode(f"The answer is \\boxed{{{gold}}}.")
    return fmt.encode(f"{gold}}}.")  # the cue already opened the box


def _target_logprob(logits: torch.Tensor, target: list[int]) -> float:
    """Sum of log p(target) given logits ``(len(target), vocab)`` predicting each target token."""
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    return float(logprobs[torch.arange(len(target)), torch.tensor(target)].sum())


def context_with_target(
    fmt: ChatFormat, trace: Trace, keep: list[bool], target: list[int]
) -> list[int]:
    return text_context(fmt, trace, keep) + target


@torch.inference_mode()
def answer_logprob(model: PreTrainedModel, ids: list[int], target_len: int) -> float:
    """log p(last ``target_len`` tokens of ``ids`` | the rest), one forward pass, no cache."""
    logits = model(torch.tensor([ids], device=model.device), logits_to_keep=target_len + 1).logits
    return _target_logprob(logits[0, :-1].cpu(), ids[-target_len:])


@SCORERS.register("ablation")
@dataclass(frozen=True)
class AblationScorer(Scorer):
    """Importance of step i = log p(answer | all steps) - log p(answer | all steps but i),
    clipped at 0 (a step whose removal helps the answer is not important), then normalised.

    An oracle: it reads the reference answer."""

    reads_gold = True

    def drops(
        self, model: PreTrainedModel, trace: Trace, fmt: ChatFormat, gold: str
    ) -> list[float]:
        """Unclipped log-probability drop per step (one forward per step, prefix reused)."""
        target = answer_target_ids(fmt, gold)
        n = len(trace.steps)
        full = context_with_target(fmt, trace, [True] * n, target)
        device = model.device
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            out = model(
                torch.tensor([full], device=device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=len(target) + 1,
            )
            base = _target_logprob(out.logits[0, :-1].cpu(), target)
            drops = [0.0] * n
            for i in reversed(range(n)):
                keep = [j != i for j in range(n)]
                ablated = context_with_target(fmt, trace, keep, target)
                # Shared prefix: ids up to where step i starts in the full context.
                shared = next(
                    (k for k, (a, b) in enumerate(zip(full, ablated, strict=False)) if a != b),
                    min(len(full), len(ablated)),
                )
                cache.crop(shared - cache.get_seq_length())  # negative: tokens to drop
                rest = torch.tensor([ablated[shared:]], device=device)
                out = model(
                    rest,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=len(target) + 1,
                )
                drops[i] = base - _target_logprob(out.logits[0, :-1].cpu(), target)
        return drops

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
        drops = np.array(self.drops(model, trace, fmt, gold))
        return normalise(np.clip(drops, 0.0, None))
