"""Scorers: spec parsing, normalisation, the attention score against a direct computation."""

from __future__ import annotations

import pytest
import torch

from stepprune.registry import SpecError, parse_spec
from stepprune.schema import Step, Trace
from stepprune.scorers import SCORERS, AttentionScorer
from tests.conftest import eager_attentions, tiny_model


def _trace(steps: list[tuple[int, int]], length: int = 40) -> Trace:
    ids = [(7 * i) % 97 + 1 for i in range(length)]
    return Trace(
        "p", 0, ids[:5], ids[5:], 5, length - 3, True, True, True, False,
        [Step(i, a, b, "") for i, (a, b) in enumerate(steps)],
    )  # fmt: skip


def test_parse_spec() -> None:
    assert parse_spec("attention:layers=first-half, agg=mean") == (
        "attention",
        {"layers": "first-half", "agg": "mean"},
    )
    assert parse_spec("length") == ("length", {})
    with pytest.raises(SpecError, match="not key=value"):
        parse_spec("attention:layers")


def test_attention_score_is_the_summed_layer_head_mean_of_the_last_row() -> None:
    model = tiny_model("llama", vocab_size=100)
    trace = _trace([(5, 12), (14, 20), (20, 33)])
    scores = AttentionScorer().score(model, trace, None)
    attentions = eager_attentions(model, trace.all_ids)
    row = torch.stack([a[0, :, -1, :].mean(0) for a in attentions]).mean(0)
    raw = torch.stack([row[s.start : s.end].sum() for s in trace.steps])
    assert torch.allclose(torch.tensor(scores), (raw / raw.sum()).float(), atol=1e-6)
    half = AttentionScorer(layers="first-half", agg="mean").score(model, trace, None)
    assert half != scores and abs(sum(half) - 1) < 1e-9


@pytest.mark.parametrize("spec", ["attention", "random", "length", "position", "uniform"])
def test_every_scorer_gives_a_distribution(spec: str) -> None:
    model = tiny_model("qwen2", vocab_size=100)
    scores = SCORERS.build(spec).score(model, _trace([(5, 8), (8, 20), (21, 30), (30, 31)]), None)
    assert len(scores) == 4 and all(s >= 0 for s in scores) and abs(sum(scores) - 1) < 1e-9


def test_baselines() -> None:
    trace = _trace([(5, 8), (8, 20), (21, 30)])
    assert SCORERS.build("length").score(None, trace) == pytest.approx([3 / 24, 12 / 24, 9 / 24])
    assert SCORERS.build("position").score(None, trace) == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    first = SCORERS.build("random:seed=1").score(None, trace)
    assert first == SCORERS.build("random:seed=1").score(None, trace)
    assert first != SCORERS.build("random:seed=2").score(None, trace)
    assert SCORERS.build("random:seed=1").spec == "random:seed=1"


def test_bad_options_are_named() -> None:
    with pytest.raises(SpecError, match="layers='middle'"):
        SCORERS.build("attention:layers=middle")
    with pytest.raises(SpecError, match="unknown option .foo."):
        SCORERS.build("length:foo=1")


def test_random_scores_depend_on_the_trace() -> None:
    # Seeded per trace (problem and sample), as documented: two traces with the same number of
    # steps get different scores, and the same trace always the same ones.
    scorer = SCORERS.build("random:seed=1")
    trace = _trace([(5, 8), (8, 20), (21, 30)])
    other_problem = Trace(**{**trace.__dict__, "problem_id": "q"})
    other_sample = Trace(**{**trace.__dict__, "sample": 1})
    first = scorer.score(None, trace)
    assert scorer.score(None, other_problem) != first
    assert scorer.score(None, other_sample) != first
    assert scorer.score(None, Trace(**trace.__dict__)) == first


def test_spec_errors_name_the_option() -> None:
    with pytest.raises(SpecError, match="seed='abc' is not an integer"):
        SCORERS.build("random:seed=abc")
    with pytest.raises(SpecError, match="'query' is given twice"):
        SCORERS.build("attention:query=last,query=probe")
