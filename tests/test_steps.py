"""Segmentation: steps are exact token spans that cover the reasoning."""

from __future__ import annotations

import random

from stepprune.models import ChatFormat
from stepprune.schema import Problem
from stepprune.steps import BlockBreakWatcher, block_breaks, segment_steps
from stepprune.traces import build_trace

PARAGRAPHS = [
    "Okay, so I need to find how many apples Tom has.",
    "Wait,",
    "He has 3 boxes of 12 apples: 3 × 12 = 36 apples.",
    "Hmm, 让我们 check: 36 − 7 = 29 apples remain after he gives 7 away.",
    "Then he buys 5 more, so 29 + 5 = 34 apples.",
]


def _assert_partition(tokenizer, ids: list[int], start: int, end: int, steps) -> None:
    """Every reasoning token is in exactly one step, or is whitespace between steps."""
    owner = {}
    for step in steps:
        assert start <= step.start < step.end <= end
        for position in range(step.start, step.end):
            assert position not in owner
            owner[position] = step.index
        assert step.text == tokenizer.decode(ids[step.start : step.end])
    for position in range(start, end):
        if position not in owner:
            assert tokenizer.decode([ids[position]]).strip() == ""
    assert [s.index for s in steps] == list(range(len(steps)))
    assert all(a.end <= b.start for a, b in zip(steps, steps[1:], strict=False))


def test_paragraphs_become_steps_and_short_ones_merge(r1_tokenizer) -> None:
    text = "\n" + "\n\n".join(PARAGRAPHS) + "\n"
    ids = [7, 8, 9] + r1_tokenizer.encode(text, add_special_tokens=False)
    steps = segment_steps(r1_tokenizer, ids, 3, len(ids), min_chars=10)
    _assert_partition(r1_tokenizer, ids, 3, len(ids), steps)
    assert len(steps) == 4  # "Wait," merges into the next paragraph
    assert steps[1].text.startswith("Wait,") and "3 × 12 = 36" in steps[1].text
    assert steps[0].text.strip() == PARAGRAPHS[0]
    assert steps[-1].text.strip() == PARAGRAPHS[-1]
    assert steps[0].start == 4  # the leading newline token is a separator


def test_random_layouts_are_partitioned(r1_tokenizer) -> None:
    rng = random.Random(0)
    words = ["Let", "x", "=", "3.", "So", "we", "get", "12", "Wait", "?", "∑", "é", "**Step**"]
    for _ in range(20):
        parts = [
            " ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(rng.randint(1, 8))
        ]
        breaks = ["\n\n", "\n", " \n\n", "\n\n\n", ".\n\n"]
        text = "".join(p + rng.choice(breaks) for p in parts)
        ids = r1_tokenizer.encode(text, add_special_tokens=False)
        steps = segment_steps(r1_tokenizer, ids, 0, len(ids), min_chars=rng.randint(0, 15))
        _assert_partition(r1_tokenizer, ids, 0, len(ids), steps)
        assert steps, text


def test_answer_section_is_never_a_step(r1_tokenizer) -> None:
    fmt = ChatFormat.from_tokenizer(r1_tokenizer)
    prompt = fmt.prompt_ids("How many apples?")
    output = fmt.encode("\n\n".join(PARAGRAPHS) + "\n</think>\n\nThe answer is \\boxed{34}.")
    output.append(r1_tokenizer.eos_token_id)
    problem = Problem(id="p", problem="How many apples?", answer="34")
    trace = build_trace(fmt, problem, 0, prompt, output, [r1_tokenizer.eos_token_id], False)
    steps = segment_steps(r1_tokenizer, trace.all_ids, trace.reasoning_start, trace.reasoning_end)
    assert steps[-1].end <= trace.reasoning_end
    assert all("boxed" not in s.text and "</think>" not in s.text for s in steps)
    _assert_partition(
        r1_tokenizer, trace.all_ids, trace.reasoning_start, trace.reasoning_end, steps
    )


def test_empty_reasoning_has_no_steps(r1_tokenizer) -> None:
    ids = r1_tokenizer.encode("\n\n \n", add_special_tokens=False)
    assert segment_steps(r1_tokenizer, ids, 0, len(ids)) == []


def test_marker_and_sentence_segmentation(r1_tokenizer) -> None:
    text = (
        "We need 3 × 12 = 36 apples. Wait, he gave 7 away so 36 − 7 = 29.\n"
        "So the total is 29 + 5 = 34 apples. Sorry-looking words like Sowing stay inside.\n\n"
        "Therefore the answer is 34. The value 3.5 is irrelevant here."
    )
    ids = r1_tokenizer.encode(text, add_special_tokens=False)
    markers = segment_steps(r1_tokenizer, ids, 0, len(ids), min_chars=5, mode="markers")
    _assert_partition(r1_tokenizer, ids, 0, len(ids), markers)
    starts = [s.text.lstrip()[:12] for s in markers]
    assert starts == ["We need 3 × ", "Wait, he gav", "So the total", "Therefore th"]
    sentences = segment_steps(r1_tokenizer, ids, 0, len(ids), min_chars=5, mode="sentence")
    _assert_partition(r1_tokenizer, ids, 0, len(ids), sentences)
    assert [s.text.strip() for s in sentences][-2:] == [
        "Therefore the answer is 34.",
        "The value 3.5 is irrelevant here.",
    ]
    assert len(sentences) == 6


def test_a_text_without_blank_lines_is_split_at_its_lines(r1_tokenizer) -> None:
    lines = [p for p in PARAGRAPHS if len(p) >= 10]
    ids = r1_tokenizer.encode("\n".join(lines) + "\n", add_special_tokens=False)
    steps = segment_steps(r1_tokenizer, ids, 0, len(ids))
    assert [s.text.strip() for s in steps] == lines
    _assert_partition(r1_tokenizer, ids, 0, len(ids), steps)
    # One blank line anywhere: paragraphs again, and single line breaks stay inside a step.
    text = f"{lines[0]}\n{lines[1]}\n\n{lines[2]}\n{lines[3]}"
    ids = r1_tokenizer.encode(text, add_special_tokens=False)
    steps = segment_steps(r1_tokenizer, ids, 0, len(ids))
    assert [s.text.strip() for s in steps] == [f"{lines[0]}\n{lines[1]}", f"{lines[2]}\n{lines[3]}"]
    # The line segmenter splits at every line end.
    steps = segment_steps(r1_tokenizer, ids, 0, len(ids), mode="line")
    assert [s.text.strip() for s in steps] == lines


def test_online_break_watcher_agrees_with_offline_blocks() -> None:
    """Fed token by token, the watcher reports each block end that block_breaks finds (a blank
    line written as two "\\n" tokens is reported at the second)."""
    single_lines = ["a", " b", ".\n", "c", ".\n", "d"]
    watcher = BlockBreakWatcher()
    assert [watcher.feed(t) for t in single_lines] == block_breaks(single_lines)
    two_token_blank = ["a", ".\n", "\n", "b", ".\n", "c", ".\n\n", "d"]
    assert block_breaks(two_token_blank) == [False, True, False, False, False, False, True, False]
    watcher = BlockBreakWatcher()
    fed = [watcher.feed(t) for t in two_token_blank]
    # Before the first blank line a line end counts; after it only blank lines do.
    assert fed == [False, True, True, False, False, False, True, False]
