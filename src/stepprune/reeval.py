"""Text-mode re-evaluation: the model answers again from the prompt and the kept steps only.

The context is built from the trace's own token ids: the exact prompt, each kept step, the
model's own separator after it, and the end-of-reasoning cue (``</think>`` for thinking models,
``The answer is \\boxed{`` for others). The original answer section is never part of it, and
threshold 0 goes through this same path: with every step kept, the context is the trace's prompt
and reasoning token for token. KV mode keeps the cache entries at the same positions
(``kept_positions``) and appends the same cue (``closing_ids``), so both modes show the model the
same sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria

from stepprune.models import THINK_CLOSE, ChatFormat
from stepprune.schema import Trace


def _bridge(previous_text: str, wanted: str = "\n\n") -> str:
    """Whitespace to insert after a piece so that exactly ``wanted`` separates it from the next
    (a step often ends in a token like ``".\\n\\n"`` that already holds the break)."""
    for size in range(len(wanted), 0, -1):
        if previous_text.endswith(wanted[:size]):
            return wanted[size:]
    return wanted


def _check_mask(trace: Trace, keep: Sequence[bool]) -> None:
    if len(keep) != len(trace.steps):
        raise ValueError(f"keep mask has {len(keep)} entries for {len(trace.steps)} steps")


def kept_positions(trace: Trace, keep: Sequence[bool]) -> list[int]:
    """Positions in ``trace.all_ids`` of what a keep mask leaves of prompt + reasoning.

    The prompt and what the model wrote before its first step (e.g. Qwen3's ``<think>\\n``),
    each kept step followed by the separator the model wrote after it when another kept step
    follows, and the trace's final separator (between its last step and the end of reasoning).
    Every step kept gives ``range(reasoning_end)``: the trace itself.
    """
    _check_mask(trace, keep)
    if not trace.steps:
        return list(range(trace.reasoning_end))
    positions = list(range(trace.steps[0].start))
    kept = [i for i, k in enumerate(keep) if k]
    for i, j in zip(kept, [*kept[1:], None], strict=True):
        step = trace.steps[i]
        positions += range(step.start, step.end)
        if j is not None:  # the separator after this step, up to where the next step began
            positions += range(step.end, trace.steps[i + 1].start)
    positions += range(trace.steps[-1].end, trace.reasoning_end)
    return positions


def closing_ids(fmt: ChatFormat, trace: Trace, keep: Sequence[bool]) -> list[int]:
    """The end-of-reasoning cue that follows the kept tokens: ``</think>\\n\\n`` after a line
    break (thinking models), or ``The answer is \\boxed{`` after a blank line (others)."""
    return _closing_after(fmt, trace, kept_positions(trace, keep))


def _closing_after(fmt: ChatFormat, trace: Trace, positions: list[int]) -> list[int]:
    reasoning = positions[len(trace.prompt_ids) :]
    return cue_after(fmt, [trace.all_ids[p] for p in reasoning])


def cue_after(fmt: ChatFormat, reasoning_ids: Sequence[int]) -> list[int]:
    """The end-of-reasoning cue to append after the (kept) reasoning tokens ``reasoning_ids``:
    ``</think>\\n\\n`` after a line break for thinking models, ``The answer is \\boxed{``
    after a blank line for others. Shared by the text, kv and online modes."""
    # The last few tokens show how many line breaks the kept text ends with.
    tail = fmt.tokenizer.decode(list(reasoning_ids[-8:]))
    if fmt.is_thinking:
        return fmt.encode(_bridge(tail or "\n", "\n") + f"{THINK_CLOSE}\n\n")
    return fmt.encode(_bridge(tail or "\n\n") + fmt.answer_cue_text())


def text_context(fmt: ChatFormat, trace: Trace, keep: Sequence[bool]) -> list[int]:
    """Token ids of the re-evaluation context for one keep mask: the kept positions' tokens
    (``kept_positions``) and the closing cue (``closing_ids``)."""
    positions = kept_positions(trace, keep)
    return [trace.all_ids[p] for p in positions] + _closing_after(fmt, trace, positions)


def has_closed_box(text: str) -> bool:
    """Whether the last ``\\boxed{`` in ``text`` has its matching closing brace."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return False
    depth = 0
    for char in text[start + len("\\boxed") :]:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return True
    return False


class ClosedBoxStop(StoppingCriteria):
    """Stops each row once its answer holds a complete ``\\boxed{...}``.

    The answer is graded from its last box, so text after the first complete box only costs
    time (a small model otherwise rambles to the token budget).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, context_width: int, prefix: str) -> None:
        self.tokenizer = tokenizer
        self.context_width = context_width
        self.prefix = prefix

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.context_width :])
        done = [has_closed_box(self.prefix + text) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@dataclass(frozen=True)
class Answer:
    """A re-evaluated answer: generated ids (end-of-sequence excluded) and whether it ran out of
    budget before finishing (end-of-sequence token or a complete box)."""

    ids: list[int]
    truncated: bool


def _cut_after_box(tokenizer: PreTrainedTokenizerBase, prefix: str, ids: list[int]) -> int | None:
    """Length of the shortest prefix of ``ids`` whose text completes a box; None if none does."""
    if not has_closed_box(prefix + tokenizer.decode(ids)):
        return None
    return next(
        k for k in range(1, len(ids) + 1) if has_closed_box(prefix + tokenizer.decode(ids[:k]))
    )


@torch.inference_mode()
def generate_answers(
    model: PreTrainedModel,
    contexts: list[list[int]],
    max_new_tokens: int,
    pad_id: int,
    eos_ids: list[int],
    batch_size: int = 8,
    box_stop: tuple[PreTrainedTokenizerBase, str] | None = None,
) -> list[Answer]:
    """Greedy answers for several contexts, left-padded into batches.

    Greedy decoding makes the answer a function of the context alone, so thresholds that keep the
    same steps need only one answer, and differences between thresholds come from pruning, not
    sampling noise. ``box_stop=(tokenizer, prefix)`` ends each answer at its first complete
    ``\\boxed{}``, where ``prefix`` is the cue text the answer continues.
    """
    answers: list[Answer] = []
    for begin in range(0, len(contexts), batch_size):
        batch = contexts[begin : begin + batch_size]
        width = max(len(c) for c in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, context in enumerate(batch):
            input_ids[row, width - len(context) :] = torch.tensor(context)
            mask[row, width - len(context) :] = 1
        stopping = [ClosedBoxStop(box_stop[0], width, box_stop[1])] if box_stop else None
        output = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad_id,
            eos_token_id=eos_ids,
            stopping_criteria=stopping,
        )
        for row in output[:, width:].tolist():
            end = next((i for i, t in enumerate(row) if t in eos_ids), None)
            ids = row[:end]
            boxed_end = _cut_after_box(box_stop[0], box_stop[1], ids) if box_stop else None
            if boxed_end is not None:
                ids = ids[:boxed_end]
            answers.append(Answer(ids=ids, truncated=end is None and boxed_end is None))
    return answers
