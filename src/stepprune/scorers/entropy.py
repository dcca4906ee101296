"""The entropy scorer: how uncertain the model was while writing each step (arXiv 2508.03346).

Spec: ``entropy[:agg=sum|mean]``. One teacher-forced forward over the trace's prompt and
reasoning gives, at every position ``t - 1`` that predicts a step token ``t``, the entropy of
the model's next-token distribution ``H_t = -sum_v p(v) log p(v)`` (nats). A step's raw score
is the sum (default) or the mean of ``H_t`` over its tokens; the scores are then normalised to
sum 1. Low entropy marks text the model found predictable, i.e. redundant: the paper prunes
the lowest-entropy steps first.

The answer section is not run: the forward is causal, so the logits at step tokens do not
depend on anything after the reasoning. Cost: one forward over prompt + reasoning; the vocabulary
projection is applied in chunks of ``CHUNK`` positions so memory stays O(CHUNK x vocab).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from transformers import PreTrainedModel

from stepprune.models import ChatFormat
from stepprune.schema import Trace
from stepprune.scorers.base import SCORERS, Scorer, normalise

AGGREGATIONS = ("sum", "mean")
CHUNK = 256  # positions per vocabulary projection (a 150k vocabulary: 150 MB in float32)


def _chunked_logits(model: PreTrainedModel, hidden: torch.Tensor):
    """Yield ``(chunk, vocab)`` float32 logits of ``hidden`` ``(positions, dim)``, by chunks."""
    head = model.get_output_embeddings()
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    for start in range(0, len(hidden), CHUNK):
        logits = head(hidden[start : start + CHUNK]).float()
        if softcap:  # Gemma-style models cap their logits after the projection
            logits = torch.tanh(logits / softcap) * softcap
        yield logits


@torch.inference_mode()
def token_entropies(model: PreTrainedModel, ids: list[int], start: int, end: int) -> torch.Tensor:
    """Entropy (nats) of the model's prediction of each token ``ids[t]``, ``start <= t < end``.

    One forward over ``ids[:end]``; the prediction of token ``t`` is read at position ``t - 1``.

    Returns:
        float64 ``(end - start,)`` on the CPU.
    """
    if start < 1:
        raise ValueError("the first token has no prediction (start must be >= 1)")
    input_ids = torch.tensor([ids[:end]], device=model.device)
    # The base model's last hidden state is what the LM head projects (after the final norm).
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state[0]
    entropies = []
    for logits in _chunked_logits(model, hidden[start - 1 : end - 1]):
        logp = torch.log_softmax(logits, dim=-1)
        entropies.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(entropies).double().cpu()


@SCORERS.register("entropy")
@dataclass(frozen=True)
class EntropyScorer(Scorer):
    """Importance of a step = summed (or mean) next-token entropy over its tokens."""

    agg: Literal["sum", "mean"] = "sum"

    def step_entropies(self, model: PreTrainedModel, trace: Trace) -> list[float]:
        """Raw per-step score before normalisation: sum or mean of token entropies."""
        first, last = trace.steps[0].start, trace.steps[-1].end
        per_token = token_entropies(model, trace.all_ids, first, last)
        values = []
        for step in trace.steps:
            span = per_token[step.start - first : step.end - first]
            values.append(float(span.sum() if self.agg == "sum" else span.mean()))
        return values

    def score(
        self,
        model: PreTrainedModel,
        trace: Trace,
        fmt: ChatFormat,
        gold: str | None = None,
    ) -> list[float]:
        if not trace.steps:
            return []
        return normalise(np.array(self.step_entropies(model, trace), dtype=np.float64))

    def online_problem(self) -> str:
        return "it reads the logits of a teacher-forced forward over the finished trace"
