"""Online pruning: eviction during (teacher-forced or sampled) generation."""

from __future__ import annotations

import pytest
import torch

from stepprune.generation import (
    SamplingConfig,
    build_trace,
    generate_outputs,
    teacher_forced_output,
)
from stepprune.kvcache import prefill
from stepprune.models import ChatFormat
from stepprune.online import OnlineConfig, OnlinePruner, _probe_scores
from stepprune.planted import generate_planted
from stepprune.pruning import POLICIES
from stepprune.reeval import closing_ids
from stepprune.reeval_kv import kv_answers
from stepprune.scorers import AttentionScorer
from stepprune.steps import segment_paragraphs
from tests.conftest import tiny_model

SAMPLING = SamplingConfig(max_new_tokens=24, temperature=1.0, top_p=0.9)


def _setup(tokenizer):
    fmt = ChatFormat.from_tokenizer(tokenizer)
    model = tiny_model("qwen2", eos_token_id=tokenizer.eos_token_id)
    problem = generate_planted(1, seed=4)[0]
    prompt = fmt.prompt_ids(problem.problem)
    eos = tokenizer.eos_token_id
    trace = build_trace(
        fmt, problem, 0, prompt, teacher_forced_output(fmt, problem, prompt, eos), [eos], True
    )
    trace.steps = segment_paragraphs(
        tokenizer, trace.all_ids, trace.reasoning_start, trace.reasoning_end
    )
    return fmt, model, trace, eos


@pytest.fixture(scope="module")
def setup(r1_tokenizer):
    return _setup(r1_tokenizer)


def _pruner(fmt, model, eos, **options) -> OnlinePruner:
    config = OnlineConfig(policy=POLICIES.build("percentile"), **options)
    return OnlinePruner(model, fmt, config, [eos])


def test_eviction_happens_and_the_probe_never_enters_the_output(setup) -> None:
    fmt, model, trace, eos = setup
    forced = trace.all_ids[len(trace.prompt_ids) : trace.reasoning_end]
    result = _pruner(fmt, model, eos, threshold=0.5, recent=8).run(
        trace.prompt_ids, SAMPLING, 0, forced, answer_max_tokens=6
    )
    assert result.evictions and result.checkpoints >= len(trace.steps) - 1
    assert result.output_ids[: len(forced)] == forced  # reasoning exactly as forced
    text = fmt.tokenizer.decode(result.output_ids)
    assert "Time is up" not in text
    evicted_text = [s["text"] for e in result.evictions for s in e["steps"]]
    assert all(t.strip() in fmt.tokenizer.decode(forced) for t in evicted_text)
    # Nothing in the prompt or in the recent window was evicted.
    gone = result.evicted_positions
    assert min(gone) >= len(trace.prompt_ids)
    assert result.final_cache_tokens < result.peak_cache_tokens
    assert result.cache_tokens == result.reasoning_end - len(gone)


def test_no_eviction_keeps_every_entry(setup) -> None:
    fmt, model, trace, eos = setup
    forced = trace.all_ids[len(trace.prompt_ids) : trace.reasoning_end]
    result = _pruner(fmt, model, eos, threshold=0.0).run(
        trace.prompt_ids, SAMPLING, 0, forced, answer_max_tokens=4
    )
    assert result.evictions == [] and result.cache_tokens == trace.reasoning_end


@pytest.mark.parametrize("name", ["r1_tokenizer", "qwen25_tokenizer"])
def test_without_eviction_the_answer_is_kv_modes(name: str, request) -> None:
    """Same cache, same end-of-reasoning cue as text and kv modes: the same greedy answer."""
    fmt, model, trace, eos = _setup(request.getfixturevalue(name))
    # End the reasoning in a single line break, as SmolLM2's traces do: the cue must add one.
    last = trace.reasoning_end - 1
    assert fmt.tokenizer.decode([trace.all_ids[last]]).strip() == ""
    trace.output_ids[last - len(trace.prompt_ids)] = fmt.encode("\n")[0]
    forced = trace.all_ids[len(trace.prompt_ids) : trace.reasoning_end]
    result = _pruner(fmt, model, eos, threshold=0.0).run(
        trace.prompt_ids, SAMPLING, 0, forced, answer_max_tokens=4
    )
    keep = [True] * len(trace.steps)
    cue = closing_ids(fmt, trace, keep)
    assert result.output_ids[len(forced) : len(forced) + len(cue)] == cue
    assert result.cue_tokens == len(cue)
    (kv,) = kv_answers(model, fmt, trace, [keep], "original", 4, [eos])
    assert result.answer_ids == kv.answer.ids


def test_budget_bounds_the_cache(setup) -> None:
    fmt, model, trace, eos = setup
    forced = trace.all_ids[len(trace.prompt_ids) : trace.reasoning_end]
    budget = len(trace.prompt_ids) + 60
    result = _pruner(fmt, model, eos, budget=budget, recent=4).run(
        trace.prompt_ids, SAMPLING, 0, forced, answer_max_tokens=2
    )
    assert result.evictions
    longest_step = max(s.num_tokens for s in trace.steps)
    assert result.cache_tokens <= budget + 2 * longest_step
    assert result.cache_tokens < trace.reasoning_end


def test_same_seed_without_eviction_reproduces_generate(setup) -> None:
    fmt, model, trace, eos = setup
    plain = generate_outputs(model, trace.prompt_ids, 1, SAMPLING, seed=11, pad_id=eos)[0]
    result = _pruner(fmt, model, eos, threshold=0.0).run(trace.prompt_ids, SAMPLING, 11)
    assert result.output_ids == plain[: len(result.output_ids)] and len(result.output_ids) == 24


def test_probe_scores_equal_the_probe_attention_scorer(setup) -> None:
    fmt, model, trace, eos = setup
    state, _ = prefill(model, trace.all_ids[: trace.reasoning_end])
    pruner = _pruner(fmt, model, eos)
    online = _probe_scores(model, state, pruner.probe, trace.steps)
    offline = AttentionScorer(query="probe").score(model, trace, fmt)
    assert torch.allclose(torch.tensor(online), torch.tensor(offline), atol=1e-5)
    assert state.length == trace.reasoning_end  # the probe left the cache
