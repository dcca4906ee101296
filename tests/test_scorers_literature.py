"""Scorers of the literature (entropy, redundancy, forced-answer, resampling, mix, calibrated
receiver heads) against direct computations, controlled models, and their spec grammar."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stepprune.context import text_context
from stepprune.modes.online import OnlineMode
from stepprune.registry import SpecError, parse_spec
from stepprune.scorers import (
    SCORERS,
    AttentionScorer,
    EntropyScorer,
    ForcedAnswerScorer,
    MixScorer,
    RedundancyScorer,
    ResamplingScorer,
    calibrate_receiver_heads,
    load_receiver_heads,
    save_receiver_heads,
)
from stepprune.scorers import resampling as resampling_module
from stepprune.scorers.ablation import answer_logprob, answer_target_ids
from stepprune.scorers.entropy import token_entropies
from stepprune.scorers.forced_answer import prefix_contexts, target_logprobs
from stepprune.scorers.receiver import head_concentration
from stepprune.scorers.redundancy import step_redundancy
from stepprune.scorers.resampling import answer_key, total_variation
from tests.conftest import tiny_model
from tests.test_scorer_variants import PROBLEM, _trace


@pytest.fixture(scope="module")
def setup(tiny_r1_tokenizer):
    """The 4-step apples trace and a tiny model whose predictions are far from uniform
    (large initial weights), so per-position values differ and an off-by-one shows."""
    fmt, trace = _trace(tiny_r1_tokenizer)
    model = tiny_model(
        "qwen2",
        vocab_size=len(tiny_r1_tokenizer),
        num_hidden_layers=2,
        initializer_range=0.5,
        eos_token_id=tiny_r1_tokenizer.eos_token_id,
    )
    return model, fmt, trace


def _unique_token(trace, fmt, step: int) -> int:
    """A token id of step ``step`` that occurs nowhere else in any forced-answer context."""
    others = set(trace.prompt_ids) | set(answer_target_ids(fmt, PROBLEM.answer))
    for s in trace.steps:
        if s.index != step:
            others |= set(trace.all_ids[s.start : s.end])
    others |= set(text_context(fmt, trace, [False] * len(trace.steps)))
    candidates = [t for t in trace.all_ids[trace.steps[step].start : trace.steps[step].end]]
    return next(t for t in candidates if t not in others and t != 0)


# -- entropy -----------------------------------------------------------------------------------


def test_token_entropies_match_categorical(setup) -> None:
    model, _, trace = setup
    start, end = trace.steps[0].start, trace.steps[-1].end
    with torch.inference_mode():
        logits = model(torch.tensor([trace.all_ids])).logits[0]
    reference = torch.distributions.Categorical(logits=logits[start - 1 : end - 1]).entropy()
    got = token_entropies(model, trace.all_ids, start, end)
    assert reference.std() > 0.05  # the positions differ: a shifted read would not match
    assert torch.allclose(got.float(), reference, atol=1e-4)


@pytest.mark.parametrize("agg", ["sum", "mean"])
def test_entropy_scores_aggregate_per_step(setup, agg: str) -> None:
    model, fmt, trace = setup
    with torch.inference_mode():
        logits = model(torch.tensor([trace.all_ids])).logits[0].double()
    per_step = []
    for s in trace.steps:
        h = torch.distributions.Categorical(logits=logits[s.start - 1 : s.end - 1]).entropy()
        per_step.append(float(h.sum() if agg == "sum" else h.mean()))
    expected = np.array(per_step) / sum(per_step)
    got = EntropyScorer(agg=agg).score(model, trace, fmt)
    assert np.allclose(got, expected, atol=1e-6)
    assert np.ptp(got) > 1e-3  # the steps are told apart


# -- redundancy --------------------------------------------------------------------------------


def _direct_redundancy(vectors: list[torch.Tensor]) -> np.ndarray:
    n = len(vectors)
    return np.array(
        [
            np.mean(
                [
                    float(torch.nn.functional.cosine_similarity(vectors[i], vectors[j], dim=0))
                    for j in range(n)
                    if j != i
                ]
            )
            for i in range(n)
        ]
    )


@pytest.mark.parametrize(("layer", "vector"), [("last", "hidden"), ("0", "hidden"), ("1", "key")])
def test_redundancy_matches_direct_cosines(setup, layer: str, vector: str) -> None:
    model, fmt, trace = setup
    ids = trace.all_ids[: trace.steps[-1].end]
    with torch.inference_mode():
        out = model(torch.tensor([ids]), output_hidden_states=True, use_cache=True)
    if vector == "hidden":
        tokens = out.hidden_states[-1 if layer == "last" else int(layer) + 1][0]
    else:
        keys = out.past_key_values.layers[int(layer)].keys[0]  # (kv_heads, tokens, head_dim)
        tokens = keys.permute(1, 0, 2).flatten(1)
    means = [tokens[s.start : s.end].double().mean(0) for s in trace.steps]
    red = _direct_redundancy(means)
    scorer = SCORERS.build(f"step-redundancy:of=length,lambda=0.4,layer={layer},vector={vector}")
    assert np.allclose(step_redundancy(scorer.step_vectors(model, trace)), red, atol=1e-6)
    # The documented formula, by hand: penalty sums to 1, shift so the minimum is 0.
    lengths = np.array([s.num_tokens for s in trace.steps], float)
    penalty = np.clip(red, 0, None) / np.clip(red, 0, None).sum()
    raw = 0.4 * lengths / lengths.sum() - 0.6 * penalty
    expected = (raw - raw.min()) / (raw - raw.min()).sum()
    assert np.allclose(scorer.score(model, trace, fmt), expected, atol=1e-6)


def test_redundancy_formula_on_a_crafted_case() -> None:
    scorer = RedundancyScorer(of="length", weight=0.5)
    got = scorer.combine([0.5, 0.25, 0.25], np.array([0.9, -0.2, 0.3]))
    # penalty [0.75, 0, 0.25]; raw [-0.125, 0.125, 0]; shifted [0, 0.25, 0.125]
    assert got == pytest.approx([0.0, 2 / 3, 1 / 3])
    same = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    assert step_redundancy(same) == pytest.approx([0.5, 0.5, 0.0])
    assert step_redundancy(same[:1]).tolist() == [0.0]


# -- forced answer -----------------------------------------------------------------------------


def test_forced_answer_matches_unbatched_forwards(setup) -> None:
    model, fmt, trace = setup
    target = answer_target_ids(fmt, PROBLEM.answer)
    contexts = prefix_contexts(fmt, trace)
    n = len(trace.steps)
    for j, context in enumerate(contexts):
        assert context == text_context(fmt, trace, [k < j for k in range(n)])
    brute = [answer_logprob(model, c + target, len(target)) for c in contexts]
    batched = target_logprobs(model, contexts, target, batch_size=3)  # padded, two batches
    assert max(abs(a - b) for a, b in zip(batched, brute, strict=True)) < 1e-4
    expected = np.clip(np.diff(brute), 0, None)
    got = ForcedAnswerScorer().score(model, trace, fmt, PROBLEM.answer)
    assert np.allclose(got, expected / expected.sum(), atol=1e-4)


class KeyedLM:
    """A stand-in causal LM: every position favours the target tokens strongly once ``key``
    is among the row's (unpadded) input ids, and is uniform otherwise."""

    def __init__(self, key: int, target: list[int], vocab: int) -> None:
        self.key, self.target, self.vocab = key, target, vocab
        self.device = torch.device("cpu")

    def __call__(self, input_ids, attention_mask, logits_to_keep, **_):
        rows, length = input_ids.shape
        logits = torch.zeros(rows, length, self.vocab)
        for row in range(rows):
            if bool(((input_ids[row] == self.key) & (attention_mask[row] == 1)).any()):
                logits[row, :, self.target] = 8.0
        return SimpleNamespace(logits=logits[:, -logits_to_keep:])


def test_forced_answer_puts_importance_on_the_step_the_answer_needs(setup) -> None:
    _, fmt, trace = setup
    key = _unique_token(trace, fmt, step=2)
    target = answer_target_ids(fmt, PROBLEM.answer)
    fake = KeyedLM(key, target, vocab=max(trace.all_ids + target) + 1)
    scores = ForcedAnswerScorer().score(fake, trace, fmt, PROBLEM.answer)
    assert scores == pytest.approx([0.0, 0.0, 1.0, 0.0])


def test_forced_answer_needs_the_gold_answer(setup) -> None:
    model, fmt, trace = setup
    with pytest.raises(ValueError, match="needs the reference answer"):
        ForcedAnswerScorer().score(model, trace, fmt)


# -- resampling --------------------------------------------------------------------------------


def test_answer_keys_and_total_variation() -> None:
    assert answer_key("The answer is \\boxed{3 4}.") == "34"
    assert answer_key("\\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert answer_key("\\boxed{7} and \\boxed{8") == "7"  # an unclosed last box is skipped
    assert answer_key("no box") is None
    assert total_variation(["1", "1", "2", None], ["1", "2", "2", "2"]) == pytest.approx(0.5)
    assert total_variation(["1", "1"], ["1", "1"]) == 0.0


def test_resampling_scores_the_total_variation_between_prefixes(setup, monkeypatch) -> None:
    _, fmt, trace = setup
    key1, key2 = _unique_token(trace, fmt, 1), _unique_token(trace, fmt, 2)
    calls = []

    def fake(model, fmt_, contexts, seeds, sampling):
        # Without either key: always 7; step 1 makes half the draws 34; step 2 makes all 9.
        calls.append((list(contexts), list(seeds), sampling))
        answers = []
        for i, context in enumerate(contexts):
            if key2 in context:
                answers.append("\\boxed{9}")
            else:
                answers.append("\\boxed{34}" if key1 in context and i % 2 else "\\boxed{7}")
        return answers

    monkeypatch.setattr(resampling_module, "sample_answers", fake)
    scorer = SCORERS.build("resampling:k=4,seed=5,max_new_tokens=16")
    scores = scorer.score(None, trace, fmt, PROBLEM.answer)
    # TV: step 0 -> 0, step 1 -> 0.5 (7 vs 7/34), step 2 -> 1 (7/34 vs 9), step 3 -> 0
    assert scores == pytest.approx([0.0, 1 / 3, 2 / 3, 0.0])
    ((contexts, seeds, sampling),) = calls
    assert contexts == [c for c in prefix_contexts(fmt, trace) for _ in range(4)]
    assert len(set(seeds)) == len(seeds) and sampling.max_new_tokens == 16


@pytest.mark.slow
def test_resampling_is_deterministic_for_a_seed(setup) -> None:
    model, fmt, trace = setup
    first = ResamplingScorer(k=2, seed=1, max_new_tokens=3).answers(model, trace, fmt)
    again = ResamplingScorer(k=2, seed=1, max_new_tokens=3).answers(model, trace, fmt)
    other = ResamplingScorer(k=2, seed=2, max_new_tokens=3).answers(model, trace, fmt)
    assert len(first) == len(trace.steps) + 1 and all(len(row) == 2 for row in first)
    assert first == again
    assert first != other


# -- mix ---------------------------------------------------------------------------------------


def test_mix_is_the_weighted_sum(setup) -> None:
    model, fmt, trace = setup
    scorer = SCORERS.build("mix:a=(entropy:agg=mean),b=position,w=0.3")
    a = np.array(EntropyScorer(agg="mean").score(model, trace, fmt))
    b = np.array(SCORERS.build("position").score(model, trace, fmt))
    assert np.allclose(scorer.score(model, trace, fmt), 0.3 * a + 0.7 * b, atol=1e-9)
    assert not np.allclose(a, b)  # the weights matter
    nested = SCORERS.build(f"mix:a=({scorer.spec}),b=length,w=0.5")
    length = np.array(SCORERS.build("length").score(model, trace, fmt))
    expected = 0.5 * (0.3 * a + 0.7 * b) + 0.5 * length
    assert np.allclose(nested.score(model, trace, fmt), expected, atol=1e-9)


# -- calibrated receiver heads -----------------------------------------------------------------


def test_head_concentration_on_a_crafted_case() -> None:
    mass = torch.full((1, 2, 1, 4), 0.25)
    mass[0, 1, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert head_concentration(mass)[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_calibration_averages_over_traces(setup, tiny_r1_tokenizer) -> None:
    model, fmt, trace = setup
    other = _trace(tiny_r1_tokenizer)[1]
    other.steps = other.steps[1:3]  # another step set: another concentration per head
    for i, step in enumerate(other.steps):
        step.index = i
    scorer = AttentionScorer(query="answer")
    mean = (
        head_concentration(scorer.step_mass(model, trace, fmt))
        + head_concentration(scorer.step_mass(model, other, fmt))
    ) / 2
    expected = [divmod(int(i), mean.shape[1]) for i in torch.argsort(mean.flatten())[:3]]
    got = calibrate_receiver_heads(model, [trace, other], fmt, top_k=3, scorer=scorer)
    assert got == expected
    last = calibrate_receiver_heads(model, [trace, other], fmt, 3, AttentionScorer("answer", "1"))
    assert {layer for layer, _ in last} == {1}  # the scorer's layers limit the candidates


def test_calibrated_scorer_uses_exactly_the_saved_heads(setup, tmp_path) -> None:
    model, fmt, trace = setup
    plain = AttentionScorer(heads="receiver", receivers=2)
    steps = plain.step_mass(model, trace, fmt)  # (L, H, Q, S)
    per_trace = plain.score(model, trace, fmt)
    # The most *diffuse* heads: what a per-trace choice would never pick.
    concentration = head_concentration(steps).flatten()
    chosen = [divmod(int(i), steps.shape[1]) for i in torch.argsort(concentration)[-2:]]
    path = tmp_path / "heads.json"
    save_receiver_heads(path, chosen, steps.shape[0], steps.shape[1], plain.spec, 1)
    assert load_receiver_heads(path) == chosen
    assert json.loads(path.read_text())["num_heads"] == steps.shape[1]
    scorer = SCORERS.build(f"attention:heads=receiver,calibration={path}")
    assert scorer.calibrated == tuple(chosen) and SCORERS.build(scorer.spec) == scorer
    expected = torch.stack([steps[layer, head] for layer, head in chosen]).mean(0).mean(0)
    got = scorer.score(model, trace, fmt)
    assert np.allclose(got, (expected / expected.sum()).numpy(), atol=1e-9)
    assert not np.allclose(got, per_trace)  # not the per-trace choice


def test_calibration_file_errors(setup, tmp_path) -> None:
    model, _, _ = setup
    missing = tmp_path / "missing.json"
    with pytest.raises(SpecError, match="cannot read receiver-head file"):
        SCORERS.build(f"attention:heads=receiver,calibration={missing}")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"heads": [[0, "x"]]}))
    with pytest.raises(SpecError, match="non-empty list of \\[layer, head\\] pairs"):
        SCORERS.build(f"attention:heads=receiver,calibration={bad}")
    good = tmp_path / "good.json"
    save_receiver_heads(good, [(1, 3), (5, 0)], 6, 4)
    with pytest.raises(SpecError, match="use it with heads=receiver"):
        SCORERS.build(f"attention:heads=mean,calibration={good}")
    scorer = SCORERS.build(f"attention:heads=receiver,calibration={good}")
    assert scorer.needs_model_config
    with pytest.raises(SpecError, match=r"receiver heads \[\(5, 0\)\] are not in this model"):
        scorer.check_model(model.config)


# -- specs and refusals ------------------------------------------------------------------------

SPECS = [
    "entropy",
    "entropy:agg=mean",
    "redundancy",
    "step-redundancy",
    "step-redundancy:of=(attention:query=probe,agg=mean),lambda=0.3,layer=1,vector=key",
    "forced-answer",
    "resampling:k=2,seed=3,max_new_tokens=8,temperature=1",
    "mix:a=attention,b=entropy,w=0.7",
    "mix:a=(mix:a=length,b=position,w=0.5),b=(step-redundancy:of=entropy),w=0.25",
]


@pytest.mark.parametrize("spec", SPECS)
def test_specs_round_trip(spec: str) -> None:
    scorer = SCORERS.build(spec)
    assert SCORERS.build(scorer.spec) == scorer
    assert SCORERS.build(scorer.spec).spec == scorer.spec


def test_nested_specs_parse_at_top_level_commas() -> None:
    assert parse_spec("mix:a=(attention:query=probe,agg=mean),b=length") == (
        "mix",
        {"a": "(attention:query=probe,agg=mean)", "b": "length"},
    )
    scorer = SCORERS.build("step-redundancy:of=(attention:query=probe,agg=mean)")
    assert scorer.base == AttentionScorer(query="probe", agg="mean")
    assert scorer.weight == 0.1 and scorer.layer == "last" and scorer.vector == "hidden"
    mix = SCORERS.build("mix:a=attention:agg=mean,b=length")  # one option: no parentheses needed
    assert mix.scorer_a == AttentionScorer(agg="mean") and mix.w == 0.5


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("entropy:agg=max", "agg='max'"),
        ("step-redundancy:vector=value", "vector='value'"),
        ("step-redundancy:lambda=2", "lambda=2 is outside the allowed range \\(>= 0 and <= 1\\)"),
        ("step-redundancy:lambda=x", "lambda='x' is not a number"),
        ("step-redundancy:layer=x", "layer='x'"),
        (
            "step-redundancy:weight=0.5",
            "unknown option 'weight' \\(options: of, lambda, layer, vector\\)",
        ),
        ("step-redundancy:of=nosuch", "unknown scorer 'nosuch'"),
        ("step-redundancy:of=(attention:heads=min)", "of=.*heads='min'"),
        ("mix:a=attention", "give both parts"),
        ("mix:a=attention,b=length,w=1.5", "w=1.5 is outside the allowed range"),
        ("mix:a=(attention:query=probe,b=length", "'\\(' without its '\\)'"),
        ("mix:a=attention),b=length", "'\\)' without its '\\('"),
        ("resampling:k=0", "k=0 is outside the allowed range \\(>= 1\\)"),
        ("resampling:temperature=0", "temperature=0 is outside the allowed range \\(> 0\\)"),
        ("resampling:k=two", "k='two' is not an integer"),
        ("forced-answer:batch=4", "unknown option 'batch' \\(options: none\\)"),
        ("attention:receivers=0", "receivers=0 is outside the allowed range"),
        ("random:seed=1.5", "seed='1.5' is not an integer"),
    ],
)
def test_bad_specs_are_named(spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        SCORERS.build(spec)


def test_model_checks_reach_nested_parts(setup) -> None:
    model, _, _ = setup
    mix = SCORERS.build("mix:a=attention:layers=0+9,b=length")
    assert mix.needs_model_config
    with pytest.raises(SpecError, match="layers \\[9\\] outside"):
        mix.check_model(model.config)
    deep = SCORERS.build("step-redundancy:of=length,layer=7")
    with pytest.raises(SpecError, match="layer 7 outside 0..1"):
        deep.check_model(model.config)
    SCORERS.build("step-redundancy:of=length,layer=1").check_model(model.config)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("entropy", "teacher-forced forward"),
        ("step-redundancy", "hidden states"),
        ("redundancy", "every cached key"),
        ("forced-answer", "every prefix"),
        ("resampling", "samples answers"),
        ("mix:a=length,b=entropy", "part 'entropy:agg=sum' cannot score cached steps"),
    ],
)
def test_online_mode_refuses_with_the_reason(spec: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"scorer '{spec.split(',')[0]}.*cannot \\(.*{reason}"):
        OnlineMode().check(SCORERS.build(spec))


def test_online_mode_takes_a_mix_of_cache_scorers() -> None:
    mix = SCORERS.build("mix:a=length,b=position,w=0.25")
    OnlineMode().check(mix)
    assert isinstance(mix, MixScorer)
