"""``attribution``: attribution patching of attention knockout (Syed et al., arXiv 2310.10348;
AtP*, arXiv 2403.00745), a one-pass linear estimate of what ``ablation`` measures.

The context is ablation's: the re-evaluation context with every step kept, then an answer in
ablation's scaffold (``answer_target_ids``): with ``answer=own`` (the default) the model's own
final answer (:func:`stepprune.scorers.own_answer.own_prediction`: the prediction of a
generated trace, the greedy answer on a teacher-forced one), answer-free; with
``answer=reference`` the reference answer, as ablation reads it (an oracle).

Every attention row of the answer section (the closing cue and the answer, in every layer and
head) is multiplied, on the keys of step ``s``, by a scale ``alpha_s`` (no renormalisation:
``alpha_s = 0`` knocks the step out of what the answer reads). With
``f(alpha) = log p(answer | context)``, the importance of step ``s`` is::

    g_s = d f / d alpha_s  at alpha = 1

the first-order estimate of ``f(1) - f(alpha_s = 0)``, the drop when the answer cannot read the
step. One forward and one backward pass give every ``g_s``; the knocked-out rows are recomputed
from the layer's queries and keys (``answer rows x N`` per layer), so memory is O(N) for the
activations plus O(answer x N) for those rows, never N x N. Scores are
``normalise(max(g, 0))``, as ablation clips at 0.

Refused online (it needs the answer after the finished reasoning). A trace on which the model
gave no answer (``answer=own``, nothing extracted) has nothing to attribute: uniform.

Not AtP*'s saturation fix: AtP* recomputes the attention softmax with the knocked-out logits;
this is the plain gradient of the scale (the patching of the paper's attention-node edges),
which can saturate where one step dominates a row.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from stepprune.context import text_context
from stepprune.models import ChatFormat
from stepprune.schema import Trace
from stepprune.scorers.ablation import answer_target_ids
from stepprune.scorers.base import SCORERS, Scorer, normalise
from stepprune.scorers.own_answer import AnswerSource, own_prediction

KNOCKOUT_IMPLEMENTATION = "stepprune_knockout"


@dataclass
class _Knockout:
    """The rows to rescale (``first_row`` to the end) and each key's scale ``(N,)``."""

    first_row: int
    key_scale: torch.Tensor


_ACTIVE: contextvars.ContextVar[_Knockout | None] = contextvars.ContextVar(
    "stepprune_knockout", default=None
)


def _knockout_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA, with the knocked-out rows recomputed by hand: ``(softmax(q K^T) * scale) V``."""
    output, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    knockout = _ACTIVE.get()
    if knockout is None:
        return output, None
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    heads, kv_heads, k_len = query.shape[1], key.shape[1], key.shape[2]
    rows = torch.arange(knockout.first_row, query.shape[2], device=query.device)
    keys = key[0].repeat_interleave(heads // kv_heads, 0)  # (heads, N, hd)
    values = value[0].repeat_interleave(heads // kv_heads, 0)
    logits = query[0, :, rows] @ keys.transpose(-1, -2) * scale  # (heads, rows, N)
    causal = torch.arange(k_len, device=query.device)[None, :] > rows[:, None]
    probs = torch.softmax(logits.masked_fill(causal, -torch.inf), dim=-1)
    patched = (probs * knockout.key_scale.to(probs.dtype)) @ values  # (heads, rows, hd)
    output = output.clone()
    output[0, knockout.first_row :] = patched.transpose(0, 1).to(output.dtype)
    return output, None


AttentionInterface.register(KNOCKOUT_IMPLEMENTATION, _knockout_forward)
AttentionMaskInterface.register(KNOCKOUT_IMPLEMENTATION, sdpa_mask)


@contextlib.contextmanager
def knockout(model: PreTrainedModel, first_row: int, key_scale: torch.Tensor) -> Iterator[None]:
    """Within the block, forwards of ``model`` (batch 1, no cache) rescale the attention of
    rows ``first_row..`` on each key by ``key_scale``."""
    config = model.config
    previous = config._attn_implementation
    token = _ACTIVE.set(_Knockout(first_row, key_scale))
    try:
        config._attn_implementation = KNOCKOUT_IMPLEMENTATION
        yield
    finally:
        config._attn_implementation = previous
        _ACTIVE.reset(token)


def knockout_logprob(
    model: PreTrainedModel, ids: list[int], target_len: int, first_row: int, scale: torch.Tensor
) -> torch.Tensor:
    """``log p(last target_len tokens | the rest)`` with the knockout applied (differentiable
    in ``scale``)."""
    input_ids = torch.tensor([ids], device=model.device)
    with knockout(model, first_row, scale):
        logits = model(input_ids, use_cache=False, logits_to_keep=target_len + 1).logits
    logprobs = torch.log_softmax(logits[0, :-1].double(), dim=-1)
    target = torch.tensor(ids[-target_len:], device=logprobs.device)
    return logprobs[torch.arange(target_len, device=logprobs.device), target].sum()


def step_key_scale(alpha: torch.Tensor, trace: Trace, length: int) -> torch.Tensor:
    """Per-key scale ``(length,)``: ``alpha[s]`` on step ``s``'s tokens, 1 elsewhere."""
    index = torch.full((length,), len(trace.steps), dtype=torch.long)
    for step in trace.steps:
        index[step.start : step.end] = step.index
    return torch.cat([alpha, alpha.new_ones(1)])[index.to(alpha.device)]


@SCORERS.register("attribution")
@dataclass(frozen=True)
class AttributionScorer(Scorer):
    """Attribution patching of attention knockout; see the module docstring. An oracle with
    ``answer=reference``."""

    answer: AnswerSource = "own"

    @property
    def reads_gold(self) -> bool:  # type: ignore[override]
        """``answer=reference`` reads the reference answer: an oracle."""
        return self.answer == "reference"

    def gradients(
        self, model: PreTrainedModel, trace: Trace, fmt: ChatFormat, answer: str
    ) -> list[float]:
        """``d log p(answer) / d alpha_s`` at ``alpha = 1``, one per step; ``answer`` is the
        final answer written in ablation's scaffold."""
        target = answer_target_ids(fmt, answer)
        # Every step kept: the context is the trace through its reasoning, then the cue, so
        # step spans are the trace's own positions.
        ids = text_context(fmt, trace, [True] * len(trace.steps)) + target
        first_row = trace.steps[-1].end
        dtype = next(model.parameters()).dtype
        alpha = torch.ones(len(trace.steps), dtype=dtype, device=model.device, requires_grad=True)
        with torch.enable_grad():
            scale = step_key_scale(alpha, trace, len(ids))
            value = knockout_logprob(model, ids, len(target), first_row, scale)
            (grad,) = torch.autograd.grad(value, alpha)
        return grad.double().cpu().tolist()

    def score(
        self, model: PreTrainedModel, trace: Trace, fmt: ChatFormat, gold: str | None = None
    ) -> list[float]:
        if not trace.steps:
            return []
        if self.answer == "reference":
            answer: str | None = self.gold_of(gold)
        else:
            answer = own_prediction(model, fmt, trace)
        if answer is None:
            return normalise(np.zeros(len(trace.steps)))
        grads = np.array(self.gradients(model, trace, fmt, answer))
        return normalise(np.clip(grads, 0.0, None))

    def online_problem(self) -> str:
        if self.answer == "reference":
            return "it reads the reference answer after the finished reasoning (an oracle)"
        return "it reads the model's answer after the finished reasoning"
