"""Attention scorer options and the ablation scorer against direct, unoptimised references."""

from __future__ import annotations

import itertools

import pytest
import torch

from stepprune.context import text_context
from stepprune.models import ChatFormat
from stepprune.registry import SpecError
from stepprune.schema import Problem
from stepprune.scorers import SCORERS, AblationScorer, AttentionScorer
from stepprune.scorers.ablation import answer_logprob, answer_target_ids
from stepprune.scorers.attention import select_receiver_heads
from stepprune.steps import segment_steps
from stepprune.traces import build_trace, teacher_forced_output
from tests.conftest import eager_attentions, tiny_model

PROBLEM = Problem(
    id="p",
    problem="Tom has 3 boxes of 12 apples and gives 2 away. How many apples are left?",
    answer="34",
    reasoning="\n\n".join(
        [
            "Tom has 3 boxes of 12 apples, so 3 × 12 = 36 apples.",
            "Apples are a popular fruit in the autumn months.",
            "He gives 2 away: 36 − 2 = 34 apples remain.",
            "Let me check 36 again: 3 × 12 = 36, right.",
        ]
    ),
    final="The answer is \\boxed{34}.",
)


def _trace(tokenizer):
    fmt = ChatFormat.from_tokenizer(tokenizer)
    prompt = fmt.prompt_ids(PROBLEM.problem)
    eos = tokenizer.eos_token_id
    output, length = teacher_forced_output(fmt, PROBLEM, prompt, eos)
    trace = build_trace(fmt, PROBLEM, 0, prompt, output, [eos], True, length)
    trace.steps = segment_steps(
        tokenizer, trace.all_ids, trace.reasoning_start, trace.reasoning_end
    )
    assert len(trace.steps) == 4
    return fmt, trace


def _reference_scores(model, trace, fmt, scorer: AttentionScorer) -> torch.Tensor:
    """The same score from eager ``output_attentions`` (full matrices), computed naively."""
    ids, positions = scorer._queries(model, trace, fmt, PROBLEM.answer)
    attentions = eager_attentions(model, ids)
    rows = torch.stack([a[0][:, positions, :] for a in attentions]).double()  # (L, H, Q, N)
    in_step = torch.zeros(len(ids), dtype=torch.bool)
    for s in trace.steps:
        in_step[s.start : s.end] = True
    if scorer.sink == "exclude":
        excluded = torch.zeros(len(ids), dtype=torch.bool)
        excluded[: scorer.sink_tokens] = True
        excluded[trace.reasoning_start : trace.reasoning_end] |= ~in_step[
            trace.reasoning_start : trace.reasoning_end
        ]
        rows = rows / rows[..., ~excluded].sum(-1, keepdim=True)
    steps = torch.stack([rows[..., s.start : s.end].sum(-1) for s in trace.steps], dim=-1)
    if scorer.agg == "mean":
        steps = steps / torch.tensor([s.end - s.start for s in trace.steps])
    layers = {"all": slice(None), "first-half": slice(0, 1), "last-half": slice(1, None)}
    steps = steps[layers[scorer.layers]]
    heads = steps.mean(1) if scorer.heads == "mean" else steps.max(1).values
    per_step = heads.mean(0).mean(0)
    return per_step / per_step.sum()


VARIANTS = [
    AttentionScorer(query=q, heads=h, agg=a, sink=s, layers=lay)
    for q, h, a, s, lay in [
        ("last", "mean", "sum", "keep", "all"),
        ("probe", "mean", "sum", "keep", "all"),
        ("probe", "max", "mean", "exclude", "first-half"),
        ("answer", "max", "sum", "exclude", "last-half"),
    ]
] + [
    AttentionScorer(query="answer", answer="reference"),
    AttentionScorer(query="answer", answer="reference", answer_tokens="values", layers="last-half"),
]


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama"])
@pytest.mark.parametrize("scorer", VARIANTS, ids=lambda s: s.spec)
def test_attention_variants_match_eager(
    arch: str, scorer: AttentionScorer, tiny_r1_tokenizer
) -> None:
    # The small vocabulary: query=answer,answer=own decodes an answer, over 525 ids not 152k.
    model = tiny_model(arch, vocab_size=len(tiny_r1_tokenizer), num_hidden_layers=2)
    fmt, trace = _trace(tiny_r1_tokenizer)
    scores = torch.tensor(scorer.score(model, trace, fmt, PROBLEM.answer), dtype=torch.float64)
    reference = _reference_scores(model, trace, fmt, scorer)
    assert (scores - reference).abs().max().item() < 1e-5


def test_probe_queries_are_the_probe_tokens_after_the_reasoning(r1_tokenizer) -> None:
    fmt, trace = _trace(r1_tokenizer)
    ids, positions = AttentionScorer(query="probe", probe_tokens="all")._queries(
        None, trace, fmt, None
    )
    assert ids[: trace.reasoning_end] == trace.all_ids[: trace.reasoning_end]
    probe_text = r1_tokenizer.decode(ids[positions[0] :])
    assert probe_text.startswith("\n\nTime is up.") and probe_text.endswith("</think>\n\n")
    assert "boxed{34}" not in r1_tokenizer.decode(ids)  # the original answer is not in the input
    # By default (Think Clearly) the query is the probe's end-of-thinking token alone.
    same_ids, (last,) = AttentionScorer(query="probe")._queries(None, trace, fmt, None)
    assert same_ids == ids and last in positions
    assert r1_tokenizer.decode(ids[last : last + 1]).strip() == "</think>"


def test_reference_answer_queries_span_the_cue_and_the_reference(r1_tokenizer) -> None:
    fmt, trace = _trace(r1_tokenizer)
    scorer = AttentionScorer(query="answer", answer="reference")
    ids, positions = scorer._queries(None, trace, fmt, PROBLEM.answer)
    assert ids[: trace.reasoning_end] == trace.all_ids[: trace.reasoning_end]
    assert positions == list(range(trace.reasoning_end, len(ids)))
    answer = r1_tokenizer.decode(ids[positions[0] :])
    assert answer.startswith("</think>") and answer.endswith("\\boxed{34}.")


def test_value_queries_are_the_answer_positions_that_write_a_digit(tiny_r1_tokenizer) -> None:
    fmt, trace = _trace(tiny_r1_tokenizer)
    every = AttentionScorer(query="answer", answer="reference")
    values = AttentionScorer(query="answer", answer="reference", answer_tokens="values")
    ids, all_positions = every._queries(None, trace, fmt, PROBLEM.answer)
    same_ids, positions = values._queries(None, trace, fmt, PROBLEM.answer)
    assert same_ids == ids and set(positions) < set(all_positions)
    # Each query predicts a digit of "34", and together they write all of it.
    written = "".join(tiny_r1_tokenizer.decode(ids[p + 1]) for p in positions)
    assert written == "34"
    assert values.spec.endswith(
        "answer=reference,answer_tokens=values,layers=all,heads=mean,agg=sum,sink=keep"
    )
    assert SCORERS.build(values.spec) == values
    assert "answer_tokens" not in every.spec  # specs written before the option are unchanged
    with pytest.raises(SpecError, match="answer_tokens=values needs query=answer"):
        AttentionScorer(answer_tokens="values")


def test_receiver_heads_on_a_crafted_case() -> None:
    mass = torch.full((2, 3, 4), 0.25)  # every head diffuse ...
    mass[1, 2] = torch.tensor([0.97, 0.01, 0.01, 0.01])  # ... but two concentrated ones
    mass[0, 1] = torch.tensor([0.0, 0.9, 0.1, 0.0])
    assert select_receiver_heads(mass, 2) == [(1, 2), (0, 1)]
    assert select_receiver_heads(mass, 1) == [(1, 2)]


def test_receiver_scorer_uses_only_the_chosen_heads(tiny_r1_tokenizer) -> None:
    model = tiny_model("qwen2", vocab_size=len(tiny_r1_tokenizer), num_hidden_layers=2)
    fmt, trace = _trace(tiny_r1_tokenizer)
    scorer = AttentionScorer(heads="receiver", receivers=1)
    steps = scorer.step_mass(model, trace, fmt)  # (L, H, Q, S)
    ((layer, head),) = select_receiver_heads(steps.mean(2), 1)
    expected = steps[layer, head].mean(0)
    expected = expected / expected.sum()
    got = torch.tensor(scorer.score(model, trace, fmt), dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_ablation_matches_brute_force_reruns(arch: str, r1_tokenizer) -> None:
    model = tiny_model(arch, num_hidden_layers=2)
    fmt, trace = _trace(r1_tokenizer)
    target = answer_target_ids(fmt, PROBLEM.answer)
    full = text_context(fmt, trace, [True] * 4) + target
    base = answer_logprob(model, full, len(target))
    brute = []
    for i in range(4):
        ablated = text_context(fmt, trace, [j != i for j in range(4)]) + target
        brute.append(base - answer_logprob(model, ablated, len(target)))
    drops = AblationScorer().drops(model, trace, fmt, PROBLEM.answer)
    assert max(abs(a - b) for a, b in zip(drops, brute, strict=True)) < 1e-4
    assert any(abs(d) > 1e-6 for d in drops)  # the steps do change the answer probability
    scores = AblationScorer().score(model, trace, fmt, PROBLEM.answer)
    assert abs(sum(scores) - 1) < 1e-9 and all(s >= 0 for s in scores)


def test_ablation_needs_the_gold_answer(r1_tokenizer) -> None:
    fmt, trace = _trace(r1_tokenizer)
    with pytest.raises(ValueError, match="needs the reference answer"):
        AblationScorer().score(tiny_model("qwen2"), trace, fmt)


@pytest.mark.parametrize(
    "spec",
    [
        "attention:query=everything",
        "attention:heads=min",
        "attention:layers=1+x",
        "attention:sink=drop",
        "attention:receivers=many",
    ],
)
def test_bad_attention_options(spec: str) -> None:
    with pytest.raises(ValueError, match="attention"):
        SCORERS.build(spec)


def test_every_spec_round_trips() -> None:
    for options in itertools.product(["last", "probe"], ["mean", "receiver"], ["keep", "exclude"]):
        query, heads, sink = options
        scorer = SCORERS.build(f"attention:query={query},heads={heads},sink={sink}")
        assert SCORERS.build(scorer.spec) == scorer
