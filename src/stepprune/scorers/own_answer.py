"""The model's own answer to a trace, for scorers that read an answer without the reference.

``attention:query=answer`` and ``attribution`` read an answer after the reasoning. With
``answer=own`` (their default) that is the answer the model gives, never the reference:

- on a **generated** trace, the answer section the model wrote (the model's own answer, as the
  run recorded and graded it);
- on a **teacher-forced** trace (the planted sets), whose answer section is the reference
  answer written by a program, the answer the model decodes greedily from the re-evaluation
  context with every step kept (the trace's prompt and reasoning, then the closing cue): what
  text mode answers at threshold 0.

``answer=reference`` (an oracle, ``reads_gold``) writes the reference answer after that same
context instead (``ablation.answer_target_ids``), the scaffold that ``ablation`` scores.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Literal

import torch
from transformers import DynamicCache, PreTrainedModel

from stepprune.context import text_context
from stepprune.decoding import StopRule
from stepprune.grading import extract_prediction
from stepprune.models import ChatFormat, eos_token_ids
from stepprune.schema import Trace

AnswerSource = Literal["own", "reference"]
# The planted answers are up to four two-digit numbers in a box: about 30 tokens with the
# scaffold. Decoding stops at the first complete box, so the budget only bounds a model that
# rambles.
OWN_ANSWER_MAX_TOKENS = 32


@torch.inference_mode()
def decode_own_answer(
    model: PreTrainedModel,
    fmt: ChatFormat,
    trace: Trace,
    max_new_tokens: int = OWN_ANSWER_MAX_TOKENS,
) -> tuple[list[int], list[int]]:
    """The re-evaluation context with every step kept and the greedy answer after it.

    With every step kept the context is ``trace.all_ids[:reasoning_end]`` and the cue, so step
    spans keep the trace's positions. Decoding stops at an end-of-sequence token or the first
    complete ``\\boxed{...}`` (``decoding.StopRule``, the rule of every re-evaluation).

    Returns:
        ``(context_ids, answer_ids)``.
    """
    context = text_context(fmt, trace, [True] * len(trace.steps))
    rule = StopRule(fmt.tokenizer, eos_token_ids(model, fmt.tokenizer), fmt.answer_cue_text())
    cache = DynamicCache(config=model.config)
    out = model(
        torch.tensor([context], device=model.device),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    answer: list[int] = []
    for _ in range(max_new_tokens):
        answer.append(int(out.logits[0, -1].argmax()))
        if rule.stop(answer) is not None:
            break
        out = model(
            torch.tensor([[answer[-1]]], device=model.device), past_key_values=cache, use_cache=True
        )
    return context, answer


@contextlib.contextmanager
def _quiet_math_verify() -> Iterator[None]:
    """math-verify warns once per process that its timeout is off (as ``extract_prediction``
    runs it here): the scorer prints nothing, as grading prints nothing."""
    logger = logging.getLogger("math_verify")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def own_prediction(model: PreTrainedModel, fmt: ChatFormat, trace: Trace) -> str | None:
    """The model's own final answer to ``trace`` (None: it gave none).

    A generated trace: the prediction graded from its answer section (``original_prediction``,
    or extracted here when the trace is scored before it is graded, as in ``stepprune run``).
    A teacher-forced trace: the prediction extracted from the greedy answer
    (:func:`decode_own_answer`), read after the cue it continues.
    """
    if not trace.teacher_forced:
        if trace.original_prediction is not None:
            return trace.original_prediction
        if not trace.original_answer:
            return None
        with _quiet_math_verify():
            return extract_prediction(trace.original_answer)
    _, answer = decode_own_answer(model, fmt, trace)
    text = fmt.answer_cue_text() + fmt.tokenizer.decode(answer, skip_special_tokens=True)
    with _quiet_math_verify():
        return extract_prediction(text)
