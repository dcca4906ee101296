"""Online pruning: eviction during (teacher-forced or sampled) generation."""

from __future__ import annotations

import pytest
import torch

from stepprune.context import closing_ids
from stepprune.decoding import SamplingConfig
from stepprune.kvcache import prefill
from stepprune.modes import KVMode, Pruning
from stepprune.modes.online import OnlineConfig, OnlinePruner
from stepprune.planted import generate_planted
from stepprune.scorers import AttentionScorer
from stepprune.session import Session
from stepprune.traces import teacher_forced_output
from tests.conftest import tiny_model

SAMPLING = SamplingConfig(max_new_tokens=24, temperature=1.0, top_p=0.9)


def _setup(tokenizer):
    """A session with the probe scorer on a tiny model, and a teacher-forced planted trace."""
    model = tiny_model("qwen2", eos_token_id=tokenizer.eos_token_id)
    session = Session(model, tokenizer, scorer="attention:query=probe", policy="percentile")
    problem = generate_planted(1, seed=4)[0]
    prompt = session.prompt_ids(problem)
    output, length = teacher_forced_output(session.format, problem, prompt, session.eos_ids[0])
    trace = session.finish_trace(problem, 0, prompt, output, length, score=False)
    return session, problem, trace


@pytest.fixture(scope="module")
def setup(r1_tokenizer):
    return _setup(r1_tokenizer)


def _pruner(session: Session, **options) -> OnlinePruner:
    return OnlinePruner(session, OnlineConfig(policy=session.policy, **options))


def _forced(trace) -> list[int]:
    return trace.all_ids[len(trace.prompt_ids) : trace.reasoning_end]


def test_eviction_happens_and_the_probe_never_enters_the_output(setup) -> None:
    session, _, trace = setup
    forced = _forced(trace)
    result = _pruner(session, threshold=0.5, recent=8).run(
        trace.prompt_ids, SAMPLING, 0, forced, answer_max_tokens=6
    )
    assert result.evictions and result.checkpoints >= len(trace.steps) - 1
    assert result.output_ids[: len(forced)] == forced  # reasoning exactly as forced
    tokenizer = session.tokenizer
    text = tokenizer.decode(result.output_ids)
    assert "Time is up" not in text
    evicted_text = [s["text"] for e in result.evictions for s in e["steps"]]
    assert all(t.strip() in tokenizer.decode(forced) for t in evicted_text)
    # Nothing in the prompt or in the recent window was evicted.
    gone = result.evicted_positions
    assert min(gone) >= len(trace.prompt_ids)
    assert result.final_cache_tokens < result.peak_cache_tokens
    assert result.cache_tokens == result.reasoning_end - len(gone)


def test_no_eviction_keeps_every_entry(setup) -> None:
    session, _, trace = setup
    result = _pruner(session, threshold=0.0).run(
        trace.prompt_ids, SAMPLING, 0, _forced(trace), answer_max_tokens=4
    )
    assert result.evictions == [] and result.cache_tokens == trace.reasoning_end


@pytest.mark.parametrize("name", ["r1_tokenizer", "qwen25_tokenizer"])
def test_without_eviction_the_answer_is_kv_modes(name: str, request) -> None:
    """Same cache, same end-of-reasoning cue as text and kv modes: the same greedy answer."""
    session, problem, trace = _setup(request.getfixturevalue(name))
    fmt = session.format
    # End the reasoning in a single line break, as SmolLM2's traces do: the cue must add one.
    last = trace.reasoning_end - 1
    assert fmt.tokenizer.decode([trace.all_ids[last]]).strip() == ""
    trace.output_ids[last - len(trace.prompt_ids)] = fmt.encode("\n")[0]
    forced = _forced(trace)
    result = _pruner(session, threshold=0.0).run(
        trace.prompt_ids, SAMPLING, 0, forced, answer_max_tokens=4
    )
    keep = [True] * len(trace.steps)
    cue = closing_ids(fmt, trace, keep)
    assert result.output_ids[len(forced) : len(forced) + len(cue)] == cue
    assert result.cue_tokens == len(cue)
    (kv,) = KVMode(answer_max_tokens=4).evaluate(
        session, problem, trace, [Pruning("uniform", 0.0, tuple(keep))]
    )
    assert result.answer is not None and result.answer.ids == kv.answer.ids


def test_budget_bounds_the_cache(setup) -> None:
    session, _, trace = setup
    budget = len(trace.prompt_ids) + 60
    result = _pruner(session, budget=budget, recent=4).run(
        trace.prompt_ids, SAMPLING, 0, _forced(trace), answer_max_tokens=2
    )
    assert result.evictions
    longest_step = max(s.num_tokens for s in trace.steps)
    assert result.cache_tokens <= budget + 2 * longest_step
    assert result.cache_tokens < trace.reasoning_end


@pytest.mark.slow
def test_same_seed_without_eviction_reproduces_generate(setup) -> None:
    session, _, trace = setup
    (plain,) = session.engine.sample([trace.prompt_ids], [11], SAMPLING)
    result = _pruner(session, threshold=0.0).run(trace.prompt_ids, SAMPLING, 11)
    assert result.output_ids == plain.ids[: len(result.output_ids)]
    assert len(result.output_ids) == 24


def test_probe_scores_equal_the_probe_attention_scorer(setup) -> None:
    session, _, trace = setup
    model, fmt = session.model, session.format
    state, _ = prefill(model, trace.all_ids[: trace.reasoning_end])
    scorer = AttentionScorer(query="probe")
    online = scorer.score_cache(model, fmt, state, trace.steps)
    offline = scorer.score(model, trace, fmt)
    assert torch.allclose(torch.tensor(online), torch.tensor(offline), atol=1e-5)
    assert state.length == trace.reasoning_end  # the probe left the cache


def test_thresholds_compound_and_budget_generates_once(setup, monkeypatch) -> None:
    from stepprune.modes import online_batch
    from stepprune.modes.online import OnlineMode

    session, problem, trace = setup
    calls = []
    original = online_batch.run_rows

    def counting(session, tasks, *args, **kwargs):
        calls.extend(task.config.threshold for task in tasks)
        return original(session, tasks, *args, **kwargs)

    monkeypatch.setattr(online_batch, "run_rows", counting)
    prunings = [Pruning(session.scorer.spec, t) for t in (0.0, 0.2, 0.5)]
    outcomes = OnlineMode(answer_max_tokens=2, recent=8).evaluate(session, problem, trace, prunings)
    assert calls == [0.0, 0.2, 0.5]  # one generation per threshold (rows of one batch)
    kept = [sum(o.keep) / len(o.keep) for o in outcomes]
    assert kept[0] == 1.0
    # The threshold is applied again at every checkpoint, to the steps still cached: steps are
    # evicted at several checkpoints, and the record reports the fraction finally kept.
    assert kept[2] <= kept[1] < 1.0
    evictions = outcomes[2].details["online"]["evictions"]
    assert len([e for e in evictions if e["steps"]]) >= 2
    assert outcomes[2].keep.count(False) == sum(len(e["steps"]) for e in evictions)
    calls.clear()
    budget = OnlineMode(answer_max_tokens=2, recent=8, budget=60).evaluate(
        session, problem, trace, prunings
    )
    assert len(calls) == 1  # --budget ignores the threshold: one generation serves them all
    assert len({tuple(o.keep) for o in budget}) == 1 and len(budget) == 3
    assert not all(budget[0].keep)  # the budget is below the cache: steps were evicted


def test_generated_answer_of_a_plain_model_is_graded_as_written(qwen25_tokenizer, monkeypatch):
    # A non-thinking model's online trace: its answer is the paragraph that writes \boxed, in
    # full, and it is graded as the model wrote it (no cue was shown to it, none is prepended).
    from stepprune.grading import Grader
    from stepprune.modes import to_record
    from stepprune.modes.online import OnlineMode, OnlineResult
    from stepprune.schema import Problem

    model = tiny_model("qwen2", eos_token_id=151645)
    eos = 151645
    problem = Problem(id="g", problem="What is 6 * 7?", answer="42")
    with Grader() as grader:
        session = Session(model, qwen25_tokenizer, scorer="length", grader=grader)
        prompt = session.prompt_ids(problem)
        output = session.format.encode("6 * 7 = 42.\n\nSo the answer is \\boxed{42}") + [eos]
        trace = session.finish_trace(problem, 0, prompt, output)
        result = OnlineResult(output, len(prompt) + 5, 10, 10, 10)
        monkeypatch.setattr(OnlinePruner, "run", lambda self, *a, **k: result)
        monkeypatch.setattr(OnlineMode, "batched", False)  # the one-at-a-time path
        mode = OnlineMode(answer_max_tokens=4)
        [outcome] = mode.evaluate(session, problem, trace, [Pruning("length", 0.0)])
        record = to_record(session, mode, problem, trace, outcome)
    assert record.answer_text == "So the answer is \\boxed{42}"
    assert record.correct and record.prediction == "42"
    assert record.online["steps"] == [[s.start, s.end] for s in outcome.steps]
