"""Locating reasoning and answer in generated (or teacher-forced) ids."""

from __future__ import annotations

from stepprune.models import ChatFormat
from stepprune.schema import Problem
from stepprune.traces import build_trace, teacher_forced_output

PROBLEM = Problem(id="p1", problem="How many apples?", answer="34")


def test_r1_trace_ends_reasoning_at_think_close(r1_tokenizer) -> None:
    fmt = ChatFormat.from_tokenizer(r1_tokenizer)
    eos = r1_tokenizer.eos_token_id
    prompt = fmt.prompt_ids(PROBLEM.problem)
    output = fmt.encode("First, 3 × 12 = 36.\n\nSo 34.\n</think>\n\nThe answer is \\boxed{34}.")
    trace = build_trace(fmt, PROBLEM, 0, prompt, [*output, eos, eos, eos], [eos], False)
    assert trace.output_ids == [*output, eos]  # padding after the first eos is dropped
    assert trace.reasoning_start == len(prompt)
    assert trace.all_ids[trace.reasoning_end] == fmt.think_close_id
    assert trace.hit_eos and trace.finished_reasoning and not trace.truncated
    assert trace.original_answer == "The answer is \\boxed{34}."


def test_budget_exhausted_trace_is_truncated(r1_tokenizer) -> None:
    fmt = ChatFormat.from_tokenizer(r1_tokenizer)
    prompt = fmt.prompt_ids(PROBLEM.problem)
    output = fmt.encode("First, 3 × 12 = 36.\n\nThen")
    trace = build_trace(fmt, PROBLEM, 0, prompt, output, [r1_tokenizer.eos_token_id], False)
    assert trace.truncated and not trace.finished_reasoning and not trace.hit_eos
    assert trace.reasoning_end == len(prompt) + len(output)
    assert trace.original_answer == ""


def test_qwen3_reasoning_starts_after_the_generated_think_tag(qwen3_tokenizer) -> None:
    fmt = ChatFormat.from_tokenizer(qwen3_tokenizer)
    prompt = fmt.prompt_ids(PROBLEM.problem)
    output = fmt.encode("<think>\nSo 34.\n</think>\n\n\\boxed{34}<|im_end|>")
    trace = build_trace(fmt, PROBLEM, 0, prompt, output, [151645, 151643], False)
    assert trace.all_ids[trace.reasoning_start - 1] == fmt.think_open_id
    assert trace.all_ids[trace.reasoning_end] == fmt.think_close_id
    assert not trace.truncated and trace.original_answer == "\\boxed{34}"


def test_plain_model_answer_section_is_the_boxed_paragraph(qwen25_tokenizer) -> None:
    fmt = ChatFormat.from_tokenizer(qwen25_tokenizer)
    prompt = fmt.prompt_ids(PROBLEM.problem)
    reasoning = fmt.encode("3 × 12 = 36.\n\n36 - 2 = 34.\n\n")
    answer = fmt.encode("So the answer is \\boxed{34}.")
    trace = build_trace(fmt, PROBLEM, 0, prompt, [*reasoning, *answer, 151645], [151645], False)
    assert trace.reasoning_end == len(prompt) + len(reasoning)
    assert trace.original_answer == "So the answer is \\boxed{34}."
    assert trace.finished_reasoning and not trace.truncated


def test_teacher_forced_r1_trace_round_trips(r1_tokenizer) -> None:
    fmt = ChatFormat.from_tokenizer(r1_tokenizer)
    problem = Problem(
        id="t", problem="Q?", answer="34", reasoning="A step.\n\nB step.", final="\\boxed{34}"
    )
    prompt = fmt.prompt_ids(problem.problem)
    eos = r1_tokenizer.eos_token_id
    output, length = teacher_forced_output(fmt, problem, prompt, eos)
    trace = build_trace(fmt, problem, 0, prompt, output, [eos], True, length)
    reasoning = r1_tokenizer.decode(trace.all_ids[trace.reasoning_start : trace.reasoning_end])
    assert reasoning.strip() == "A step.\n\nB step."
    assert trace.original_answer == "\\boxed{34}" and not trace.truncated


def test_thinking_trace_that_ends_before_think_close_is_truncated(r1_tokenizer) -> None:
    # The model wrote its end-of-sequence token without ever closing its reasoning: the trace
    # hit EOS, yet it never finished thinking, so it counts as truncated.
    fmt = ChatFormat.from_tokenizer(r1_tokenizer)
    eos = r1_tokenizer.eos_token_id
    prompt = fmt.prompt_ids(PROBLEM.problem)
    output = fmt.encode("First, 3 × 12 = 36.\n\nSo 34.")
    trace = build_trace(fmt, PROBLEM, 0, prompt, [*output, eos], [eos], False)
    assert trace.hit_eos and not trace.finished_reasoning
    assert trace.truncated


def test_brought_reasoning_with_a_box_keeps_all_its_steps(qwen25_tokenizer) -> None:
    # A plain model's reasoning that writes \boxed{} mid-way: where the reasoning ends comes
    # from the field boundary, never from a box inside it.
    fmt = ChatFormat.from_tokenizer(qwen25_tokenizer)
    problem = Problem(
        id="b",
        problem="Q?",
        answer="34",
        reasoning="First \\boxed{36} is wrong.\n\nThen 36 - 2 = 34.",
        final="So \\boxed{34}.",
    )
    prompt = fmt.prompt_ids(problem.problem)
    output, length = teacher_forced_output(fmt, problem, prompt, 151645)
    trace = build_trace(fmt, problem, 0, prompt, output, [151645], True, length)
    reasoning = qwen25_tokenizer.decode(trace.all_ids[trace.reasoning_start : trace.reasoning_end])
    assert reasoning.strip() == problem.reasoning
    assert trace.original_answer == "So \\boxed{34}."
    assert trace.problem == "Q?"
