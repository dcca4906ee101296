"""Batched online mode: the thresholds of a trace as rows of one batch give exactly what one
generation at a time gives (tokens, checkpoints, evictions, answers), in fewer forwards."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from stepprune.bench.pipeline import ForwardCounter
from stepprune.decoding import SamplingConfig
from stepprune.modes import Pruning
from stepprune.modes import online_rows as rows_module
from stepprune.modes.online import OnlineConfig, OnlineMode, OnlinePruner
from stepprune.modes.online_batch import OnlineTask, batchable, run_rows
from stepprune.planted import generate_planted
from stepprune.session import Session
from stepprune.traces import teacher_forced_output
from tests.conftest import tiny_model

THRESHOLDS = (0.0, 0.2, 0.4, 0.6)
ARCHS = {
    "qwen2": ("qwen2", {}),
    "llama": ("llama", {}),
    # Layer 0 full attention, layers 1-2 an 8-token sliding window.
    "qwen2-sliding": (
        "qwen2",
        {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
    ),
}


def _session(tokenizer, name: str, scorer: str = "attention:query=probe") -> Session:
    arch, overrides = ARCHS[name]
    # The small-vocabulary R1 tokenizer (conftest.small_vocabulary): sampling a row's token
    # over 525 ids instead of 151,936 keeps these comparisons fast.
    model = tiny_model(
        arch, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, **overrides
    )
    return Session(model, tokenizer, scorer=scorer, policy="percentile")


def _writing(session: Session, eos: float = 0.02, close: float = 0.01) -> None:
    """Give a random model's next token these probabilities (whatever its logits' scale):
    0.15 a paragraph end, ``close`` ``</think>``, ``eos`` the end of sequence. It then writes
    paragraphs (steps to evict), closes its reasoning and stops, at random moments."""
    fmt = session.format
    (paragraph,) = fmt.encode("\n\n")
    chances = {paragraph: 0.15}
    if close:
        chances[fmt.think_close_id] = close
    if eos:
        chances[session.eos_ids[0]] = eos
    ids = torch.tensor(list(chances))
    odds = torch.tensor([p / (1 - p) for p in chances.values()]).log()

    def hook(module, args, output):
        logits = output.logits
        logits[..., ids] = logits.logsumexp(-1, keepdim=True) + odds.to(logits.dtype)
        return output

    session.model.register_forward_hook(hook)


def _forced_trace(session: Session):
    problem = generate_planted(1, seed=4)[0]
    prompt = session.prompt_ids(problem)
    output, length = teacher_forced_output(session.format, problem, prompt, session.eos_ids[0])
    trace = session.finish_trace(problem, 0, prompt, output, length, score=False)
    return problem, trace, trace.all_ids[len(prompt) : trace.reasoning_end]


def _both(session, prompts, configs, sampling, seeds, forced=None, answer_tokens=6):
    """One generation at a time, then the same as rows of one batch (row i: ``prompts[i]``,
    ``configs[i]``, ``seeds[i]``)."""
    rows = list(zip(prompts, configs, seeds, strict=True))
    one = [
        OnlinePruner(session, c).run(p, sampling, seed, forced, answer_tokens)
        for p, c, seed in rows
    ]
    tasks = [OnlineTask(p, c, seed, forced) for p, c, seed in rows]
    return one, run_rows(session, tasks, sampling, answer_tokens)


def _assert_same(one, batched) -> None:
    for a, b in zip(one, batched, strict=True):
        assert b.output_ids == a.output_ids
        assert b.evictions == a.evictions
        assert b.evicted_positions == a.evicted_positions
        assert b.answer == a.answer
        assert vars(b) == vars(a)  # and every count: checkpoints, cache sizes, reasoning end


@pytest.mark.parametrize("name", list(ARCHS))
def test_generated_rows_equal_one_generation_at_a_time(tiny_r1_tokenizer, name: str) -> None:
    session = _session(tiny_r1_tokenizer, name)
    _writing(session)
    # The thresholds of one trace (one prompt, one seed), and rows of other traces beside
    # them (other prompts and seeds): these end at other moments.
    problems = generate_planted(3, seed=4)
    prompts = [session.prompt_ids(problems[0])] * 3 + [session.prompt_ids(p) for p in problems]
    seeds = [5, 5, 5, 6, 7, 8]
    thresholds = (0.0, 0.3, 0.6, 0.3, 0.3, 0.6)
    sampling = SamplingConfig(max_new_tokens=64, temperature=1.0, top_p=1.0)
    configs = [OnlineConfig(session.policy, t, recent=4) for t in thresholds]
    one, batched = _both(session, prompts, configs, sampling, seeds)
    _assert_same(one, batched)
    # Not vacuous: steps were evicted, and the rows ended at different moments.
    assert sum(len(r.evictions) for r in one) >= 2
    assert len({len(r.output_ids) for r in one}) > 1


@pytest.mark.parametrize("name", list(ARCHS))
def test_forced_rows_equal_one_generation_at_a_time(tiny_r1_tokenizer, name: str) -> None:
    session = _session(tiny_r1_tokenizer, name)
    _, trace, forced = _forced_trace(session)
    sampling = SamplingConfig(max_new_tokens=8)
    configs = [OnlineConfig(session.policy, t, recent=4) for t in THRESHOLDS]
    prompts, seeds = [trace.prompt_ids] * len(configs), [0] * len(configs)
    one, batched = _both(session, prompts, configs, sampling, seeds, forced, 6)
    _assert_same(one, batched)
    assert len({frozenset(r.evicted_positions) for r in one}) >= 2  # rows differ
    assert sum(r.checkpoints for r in one) >= 8


def test_top_p_interval_checkpoints_and_a_steps_only_scorer(tiny_r1_tokenizer) -> None:
    session = _session(tiny_r1_tokenizer, "qwen2", scorer="random")
    _writing(session, eos=0.005)
    prompt = session.prompt_ids(generate_planted(1, seed=4)[0])
    sampling = SamplingConfig(max_new_tokens=64, temperature=1.0, top_p=0.95)
    configs = [OnlineConfig(session.policy, t, interval=6, recent=2) for t in (0.0, 0.3, 0.6)]
    one, batched = _both(session, [prompt] * 3, configs, sampling, [9, 9, 10])
    _assert_same(one, batched)
    assert any(r.evictions for r in one)


def test_compaction_changes_nothing(tiny_r1_tokenizer, monkeypatch) -> None:
    # With no minimum waste the batch compacts at almost every checkpoint.
    monkeypatch.setattr(rows_module, "GROW_CHUNK", 1)
    compactions = []
    original = rows_module.OnlineRows.compact
    monkeypatch.setattr(
        rows_module.OnlineRows, "compact", lambda self: compactions.append(1) or original(self)
    )
    session = _session(tiny_r1_tokenizer, "qwen2-sliding")
    _writing(session)
    prompt = session.prompt_ids(generate_planted(1, seed=4)[0])
    sampling = SamplingConfig(max_new_tokens=40, temperature=1.0, top_p=1.0)
    configs = [OnlineConfig(session.policy, t, recent=4) for t in THRESHOLDS]
    one, batched = _both(session, [prompt] * 4, configs, sampling, [5, 5, 6, 7])
    _assert_same(one, batched)
    assert len(compactions) >= 3


def _forwards(session: Session, run) -> int:
    counter = ForwardCounter(session.model)
    try:
        run()
    finally:
        counter.handle.remove()
    return counter.forwards


def test_forwards_per_trace_are_divided_by_the_number_of_thresholds(tiny_r1_tokenizer) -> None:
    # The benchmark's setting: forced lengths (no end-of-sequence id), a checkpoint every
    # ``interval`` tokens, the probe scorer.
    session = _session(tiny_r1_tokenizer, "qwen2")
    _writing(session, eos=0.0, close=0.0)  # reasoning all the way: a checkpoint every 8 tokens
    session.eos_ids = []
    prompt = session.prompt_ids(generate_planted(1, seed=4)[0])
    sampling = SamplingConfig(max_new_tokens=64, temperature=1.0, top_p=1.0)
    configs = [OnlineConfig(session.policy, t, interval=8, recent=2) for t in THRESHOLDS]
    one: list = []

    def one_at_a_time() -> None:
        for config in configs:
            pruner = OnlinePruner(session, config)
            pruner.eos_ids = []
            one.append(pruner.run(prompt, sampling, 1))

    before = _forwards(session, one_at_a_time)
    tasks = [OnlineTask(prompt, c, 1) for c in configs]
    batched: list = []
    after = _forwards(session, lambda: batched.extend(run_rows(session, tasks, sampling)))
    _assert_same(one, batched)
    # Up to 64 / 8 checkpoints (random tokens may leave one without a finished step), probed.
    assert all(r.checkpoints >= 4 for r in one) and any(r.evictions for r in one)
    assert before > len(THRESHOLDS) * (1 + 64)  # prefill and tokens of each, and probes
    assert after == 1 + 64  # one prefill, one forward per token, probes ride along
    assert after * len(THRESHOLDS) <= before


def test_a_batch_costs_the_forwards_of_its_longest_row(tiny_r1_tokenizer) -> None:
    # Rows that stop early, and probes at different moments (paragraph checkpoints): each
    # forward advances every live row by a token (and its probe).
    session = _session(tiny_r1_tokenizer, "llama")
    _writing(session)
    problems = generate_planted(2, seed=4)
    prompts = [session.prompt_ids(p) for p in problems] * 2
    seeds = [5, 6, 7, 8]
    sampling = SamplingConfig(max_new_tokens=48, temperature=1.0, top_p=1.0)
    configs = [OnlineConfig(session.policy, t, recent=4) for t in THRESHOLDS]
    rows = list(zip(prompts, configs, seeds, strict=True))
    each = [
        _forwards(session, lambda p=p, c=c, s=s: OnlinePruner(session, c).run(p, sampling, s))
        for p, c, s in rows
    ]
    tasks = [OnlineTask(p, c, s) for p, c, s in rows]
    batched = _forwards(session, lambda: run_rows(session, tasks, sampling))
    assert len(set(each)) > 1
    assert batched <= max(each) + 1  # a second prompt's prefill
    assert batched * 2 < sum(each)


def test_mode_records_are_the_same_batched_or_not(tiny_r1_tokenizer, monkeypatch) -> None:
    from stepprune.grading import Grader
    from stepprune.modes import to_record

    arch, overrides = ARCHS["qwen2"]
    model = tiny_model(
        arch,
        vocab_size=len(tiny_r1_tokenizer),
        eos_token_id=tiny_r1_tokenizer.eos_token_id,
        **overrides,
    )
    with Grader() as grader:
        session = Session(model, tiny_r1_tokenizer, scorer="attention:query=probe", grader=grader)
        problem, trace, _ = _forced_trace(session)
        prunings = [Pruning(session.scorer.spec, t) for t in THRESHOLDS]
        mode = OnlineMode(answer_max_tokens=4, recent=4)
        batched = mode.evaluate(session, problem, trace, prunings)
        monkeypatch.setattr(OnlineMode, "batched", False)
        one = mode.evaluate(session, problem, trace, prunings)
        records = [
            [asdict(to_record(session, mode, problem, trace, o)) for o in outcomes]
            for outcomes in (one, batched)
        ]
    assert records[0] == records[1]
    assert len({tuple(o.keep) for o in one}) >= 2


def test_mix_scorers_run_one_generation_at_a_time(tiny_r1_tokenizer) -> None:
    assert batchable(_session(tiny_r1_tokenizer, "qwen2").scorer)
    assert batchable(_session(tiny_r1_tokenizer, "qwen2", scorer="length").scorer)
    mix = _session(tiny_r1_tokenizer, "qwen2", scorer="mix:a=(attention:query=probe),b=length")
    assert not batchable(mix.scorer)
    with pytest.raises(ValueError, match="does not score rows in a batch"):
        run_rows(mix, [], SamplingConfig(max_new_tokens=2))
