"""Traces: where the reasoning and the answer are in generated (or teacher-forced) token ids.

A trace keeps the exact prompt ids and output ids; the reasoning is located on those ids, never by
re-rendering text through a chat template (R1's template deletes reasoning from assistant turns).
"""

from __future__ import annotations

from stepprune.models import THINK_OPEN, ChatFormat
from stepprune.schema import Problem, Trace
from stepprune.steps import block_breaks, token_texts


def _cut_at_eos(output_ids: list[int], eos_ids: list[int]) -> tuple[list[int], bool]:
    """Output up to and including the first end-of-sequence token (drops batch padding)."""
    for i, token in enumerate(output_ids):
        if token in eos_ids:
            return output_ids[: i + 1], True
    return output_ids, False


def _plain_answer_start(fmt: ChatFormat, output_ids: list[int]) -> int | None:
    """For a model without ``</think>``: index in ``output_ids`` of the paragraph (the line, in a
    text without blank lines) that first writes ``\\boxed``, the start of its answer section;
    None if it never does."""
    texts = token_texts(fmt.tokenizer, output_ids)
    paragraph_start, paragraph = 0, ""
    for i, (text, ends_paragraph) in enumerate(zip(texts, block_breaks(texts), strict=True)):
        paragraph += text
        if "\\boxed" in paragraph:
            return paragraph_start
        if ends_paragraph:
            paragraph_start, paragraph = i + 1, ""
    return None


def build_trace(
    fmt: ChatFormat,
    problem: Problem,
    sample: int,
    prompt_ids: list[int],
    output_ids: list[int],
    eos_ids: list[int],
    teacher_forced: bool,
    reasoning_length: int | None = None,
) -> Trace:
    """Locate reasoning and answer section in ``output_ids`` and wrap them in a ``Trace``.

    Thinking models: reasoning runs from after ``<think>`` (in the prompt for R1-distill, or the
    first output tokens for Qwen3) up to ``</think>``. Other models: up to the paragraph that
    writes ``\\boxed``, or ``reasoning_length`` output tokens when the caller knows where the
    reasoning ends (a teacher-forced trace: the field boundary, never a box inside the
    reasoning). Steps are not segmented here.
    """
    output_ids, hit_eos = _cut_at_eos(list(output_ids), eos_ids)
    n = len(prompt_ids)
    body_end = len(output_ids) - (1 if hit_eos else 0)
    start = 0
    if fmt.is_thinking and not fmt.opens_reasoning(prompt_ids):
        head = output_ids[:3]
        if fmt.think_open_id in head:
            start = head.index(fmt.think_open_id) + 1
    if fmt.is_thinking:
        finished = fmt.think_close_id in output_ids[start:]
        end = output_ids.index(fmt.think_close_id, start) if finished else body_end
        answer_from = end + 1 if finished else body_end
    elif reasoning_length is not None:
        finished, end = True, reasoning_length
        answer_from = end
    else:
        answer_start = _plain_answer_start(fmt, output_ids[:body_end])
        finished = answer_start is not None
        end = answer_start if finished else body_end
        answer_from = end
    answer = fmt.tokenizer.decode(output_ids[answer_from:body_end], skip_special_tokens=True)
    return Trace(
        problem_id=problem.id,
        sample=sample,
        prompt_ids=list(prompt_ids),
        output_ids=output_ids,
        reasoning_start=n + start,
        reasoning_end=n + end,
        finished_reasoning=finished,
        hit_eos=hit_eos,
        teacher_forced=teacher_forced,
        truncated=not hit_eos or (fmt.is_thinking and not finished),
        original_answer=answer.strip(),
        problem=problem.problem,
    )


def teacher_forced_output(
    fmt: ChatFormat, problem: Problem, prompt_ids: list[int], eos_id: int
) -> tuple[list[int], int]:
    """Output ids for a problem that carries its own reasoning: the reasoning (tokenised as one
    string, so the ids are those a model would see), the end of thinking, the answer section.

    Returns:
        ``(output_ids, reasoning_length)``: where the reasoning ends in ``output_ids`` (for a
        thinking model, the position of ``</think>``).
    """
    if problem.reasoning is None:
        raise ValueError(f"problem {problem.id} has no reasoning to teacher-force")
    final = problem.final or ""
    reasoning = fmt.encode(problem.reasoning)
    if fmt.is_thinking:
        opening = [] if fmt.opens_reasoning(prompt_ids) else fmt.encode(f"{THINK_OPEN}\n")
        closing = fmt.encode(f"\n{fmt.tokenizer.decode([fmt.think_close_id])}\n\n{final}")
        return opening + reasoning + closing + [eos_id], len(opening) + len(reasoning)
    # Where a generated trace's answer paragraph would start: after the first paragraph break
    # (``block_breaks``, as ``_plain_answer_start``) in the blank line before the answer; never
    # inside the reasoning, whatever it contains.
    tail = fmt.encode(f"\n\n{final}")
    output = reasoning + tail + [eos_id]
    blank = next((i for i, t in enumerate(tail) if fmt.tokenizer.decode([t]).strip()), len(tail))
    breaks = block_breaks(token_texts(fmt.tokenizer, output[: len(reasoning) + blank]))
    ends = [i + 1 for i in range(len(reasoning), len(reasoning) + blank) if breaks[i]]
    return output, ends[0] if ends else len(reasoning) + blank
