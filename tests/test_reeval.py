"""Re-evaluation contexts (``stepprune.context``) hold the prompt and kept steps only; greedy
answers (the ``hf`` engine) are cut at eos and at the first complete box."""

from __future__ import annotations

import itertools

import pytest
import torch

from stepprune.context import closing_ids, text_context
from stepprune.decoding import BOX, EOS, has_closed_box
from stepprune.engines import HFEngine
from stepprune.kvcache import prefill
from stepprune.models import ChatFormat
from stepprune.modes.kv import kept_entries
from stepprune.schema import Problem, Step, Trace
from stepprune.steps import segment_steps
from stepprune.traces import build_trace, teacher_forced_output
from tests.conftest import tiny_model

PROBLEM = Problem(
    id="p",
    problem="Tom has 3 boxes of 12 apples, gives 7 away and buys 5. How many apples?",
    answer="34",
    reasoning="\n\n".join(
        [
            "Tom has 3 boxes of 12 apples, so 3 × 12 = 36 apples.",
            "Apples are a popular fruit in the autumn months.",
            "He gives 7 away: 36 − 7 = 29 apples remain.",
            "Buying 5 more gives 29 + 5 = 34 apples in total.",
        ]
    ),
    final="The answer is \\boxed{34}. Final: thirty-four apples.",
)


def _trace(tokenizer):
    fmt = ChatFormat.from_tokenizer(tokenizer)
    eos = tokenizer.eos_token_id
    prompt = fmt.prompt_ids(PROBLEM.problem)
    output, length = teacher_forced_output(fmt, PROBLEM, prompt, eos)
    trace = build_trace(fmt, PROBLEM, 0, prompt, output, [eos], True, reasoning_length=length)
    trace.steps = segment_steps(
        tokenizer, trace.all_ids, trace.reasoning_start, trace.reasoning_end
    )
    return fmt, trace


@pytest.mark.parametrize("name", ["r1_tokenizer", "qwen3_tokenizer", "qwen25_tokenizer"])
def test_no_answer_text_in_any_context(name: str, request) -> None:
    tokenizer = request.getfixturevalue(name)
    fmt, trace = _trace(tokenizer)
    assert len(trace.steps) == 4
    answer_ids = trace.all_ids[trace.reasoning_end :]
    for keep in itertools.product([True, False], repeat=4):
        if not any(keep):
            continue
        context = text_context(fmt, trace, keep)
        text = tokenizer.decode(context)
        assert "thirty-four" not in text and "Final:" not in text
        assert context[: len(trace.prompt_ids)] == trace.prompt_ids
        # The answer section's ids never appear as a run in the context.
        tail = answer_ids[-6:]
        assert not any(context[i : i + 6] == tail for i in range(len(context)))
        for step, kept in zip(trace.steps, keep, strict=True):
            assert (step.text.strip() in text) == kept


def test_full_context_keeps_every_step_in_order_and_closes_thinking(r1_tokenizer) -> None:
    fmt, trace = _trace(r1_tokenizer)
    context = text_context(fmt, trace, [True] * 4)
    text = r1_tokenizer.decode(context)
    positions = [text.index(step.text.strip()) for step in trace.steps]
    assert positions == sorted(positions)
    assert text.endswith("34 apples in total.\n</think>\n\n")
    assert "\n\n\n" not in text
    # Every reasoning token of the trace is in the context, in order.
    reasoning = [i for s in trace.steps for i in trace.all_ids[s.start : s.end]]
    body = context[len(trace.prompt_ids) :]
    it = iter(body)
    assert all(token in it for token in reasoning)


@pytest.mark.parametrize("name", ["r1_tokenizer", "qwen3_tokenizer", "qwen25_tokenizer"])
def test_full_context_is_the_trace_itself(name: str, request) -> None:
    """Threshold 0 re-reads the model's own tokens: no re-encoded separators."""
    tokenizer = request.getfixturevalue(name)
    fmt, trace = _trace(tokenizer)
    keep = [True] * 4
    context = text_context(fmt, trace, keep)
    end = trace.reasoning_end
    assert context[:end] == trace.all_ids[:end]
    closing = closing_ids(fmt, trace, keep)
    assert context[end:] == closing
    if fmt.is_thinking:  # the cue is what the model wrote after its reasoning: </think>\n\n
        assert closing == trace.all_ids[end : end + len(closing)]
    # Dropping a step drops it with its separator; the rest are the model's own tokens.
    pruned = text_context(fmt, trace, [True, False, True, True])
    steps = trace.steps
    expected = trace.all_ids[: steps[1].start] + trace.all_ids[steps[2].start : end]
    assert pruned == expected + closing_ids(fmt, trace, [True, False, True, True])


def test_separators_are_the_models_own_tokens(qwen25_tokenizer) -> None:
    """A model may write a blank line as two "\\n" tokens, where encoding "\\n\\n" gives one:
    the context must keep the model's tokens, not re-encode them."""
    fmt = ChatFormat.from_tokenizer(qwen25_tokenizer)
    newline = fmt.encode("\n")
    assert fmt.encode("\n\n") != newline * 2  # the case this test is about
    prompt = fmt.prompt_ids("What is 2 + 3?")
    texts = ["First, 2 + 3 = 5.", "Check: 5 - 3 = 2, right."]
    output, steps = [], []
    for index, text in enumerate(texts):
        start = len(prompt) + len(output)
        output += fmt.encode(text)
        steps.append(Step(index, start, len(prompt) + len(output), text))
        output += newline * 2
    end = len(prompt) + len(output)
    output += fmt.encode("The answer is \\boxed{5}.")
    trace = Trace("p", 0, prompt, output, len(prompt), end, True, True, True, False, steps)
    context = text_context(fmt, trace, [True, True])
    assert context[:end] == trace.all_ids[:end]
    assert qwen25_tokenizer.decode(context[end:]) == "The answer is \\boxed{"


@pytest.mark.parametrize("name", ["r1_tokenizer", "qwen25_tokenizer"])
def test_kv_and_text_modes_see_the_same_sequence(name: str, request) -> None:
    """Without eviction, the answer's first logits from the kv cache equal text mode's."""
    tokenizer = request.getfixturevalue(name)
    fmt, trace = _trace(tokenizer)
    model = tiny_model("qwen2")
    keep = [True] * 4
    full, _ = prefill(model, trace.all_ids[: trace.reasoning_end])
    pruned = full.gather(kept_entries(trace, keep))
    kv_logits = pruned.forward(model, closing_ids(fmt, trace, keep))[-1]
    with torch.inference_mode():
        text_logits = model(torch.tensor([text_context(fmt, trace, keep)])).logits[0, -1]
    assert (kv_logits - text_logits).abs().max().item() < 1e-4


def test_qwen3_context_reopens_thinking(qwen3_tokenizer) -> None:
    fmt, trace = _trace(qwen3_tokenizer)
    context = text_context(fmt, trace, [True, False, False, True])
    body = qwen3_tokenizer.decode(context[len(trace.prompt_ids) :])
    assert body.startswith("<think>\nTom has 3 boxes")
    assert "popular fruit" not in body and body.endswith("</think>\n\n")


def test_plain_model_context_ends_with_the_answer_cue(qwen25_tokenizer) -> None:
    fmt, trace = _trace(qwen25_tokenizer)
    text = qwen25_tokenizer.decode(text_context(fmt, trace, [False, False, True, True]))
    assert text.endswith("34 apples in total.\n\nThe answer is \\boxed{")


def test_keep_mask_must_match_steps(r1_tokenizer) -> None:
    fmt, trace = _trace(r1_tokenizer)
    with pytest.raises(ValueError, match="3 entries for 4 steps"):
        text_context(fmt, trace, [True, True, True])


def _greedy(model, contexts, max_new_tokens, eos_ids, batch_size=8, tokenizer=None, box=None):
    engine = HFEngine(model, tokenizer, eos_ids, pad_id=0, batch_size=batch_size)
    return engine.greedy(contexts, max_new_tokens, box_prefix=box)


def test_batched_answers_stop_at_eos_and_flag_budget_exhaustion() -> None:
    model = tiny_model("qwen2", vocab_size=300, eos_token_id=299)
    contexts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
    free = _greedy(model, contexts, max_new_tokens=6, eos_ids=[299])
    assert [len(a.ids) for a in free] == [6, 6, 6] and all(a.truncated for a in free)
    # Declaring the first greedy token an eos ends each answer immediately.
    first_tokens = [a.ids[0] for a in free]
    stopped = _greedy(model, contexts, 6, eos_ids=first_tokens, batch_size=2)
    assert all(not a.truncated and a.stop == EOS and a.content_ids == [] for a in stopped)
    assert [a.ids for a in stopped] == [[t] for t in first_tokens]
    # Left padding does not change the greedy answer of a context.
    alone = _greedy(model, [contexts[0]], 6, eos_ids=[299])
    assert alone[0].ids == free[0].ids


@pytest.mark.parametrize(
    ("text", "closed"),
    [
        ("The answer is \\boxed{34}.", True),
        ("\\boxed{\\frac{1}{2}}", True),
        ("\\boxed{\\frac{1}{2}", False),
        ("\\boxed{3} then \\boxed{4", False),
        ("no box", False),
    ],
)
def test_closed_box_detection(text: str, closed: bool) -> None:
    assert has_closed_box(text) is closed


def test_answers_stop_at_the_first_complete_box(qwen25_tokenizer) -> None:
    """A tiny model never writes a box; a box in the cue itself stops it after one token."""
    model = tiny_model("qwen2", vocab_size=151936, eos_token_id=151643)
    answers = _greedy(model, [[5, 6, 7]], 5, [151643], tokenizer=qwen25_tokenizer, box="\\boxed{x}")
    assert len(answers[0].ids) == 1 and not answers[0].truncated and answers[0].stop == BOX
    rambling = _greedy(model, [[5, 6, 7]], 5, [151643], tokenizer=qwen25_tokenizer, box="\\boxed{")
    assert len(rambling[0].ids) == 5 and rambling[0].truncated
