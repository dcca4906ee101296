"""The re-evaluation context: what the model sees when it answers from the kept steps only.

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
    # Each kept step with the next kept one (None after the last; no pairs if none is kept).
    for i, j in zip(kept, [*kept[1:], None][: len(kept)], strict=True):
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
