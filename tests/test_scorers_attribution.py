"""``attribution``: its gradients against finite differences of the same attention knockout on
a tiny model, the knockout at scale 1 against the plain forward, and its refusals."""

from __future__ import annotations

import pytest
import torch

from stepprune.context import text_context
from stepprune.scorers import SCORERS
from stepprune.scorers.ablation import answer_logprob, answer_target_ids
from stepprune.scorers.attribution import knockout_logprob, step_key_scale
from tests.conftest import tiny_model
from tests.test_scorer_variants import PROBLEM, _trace


@pytest.fixture(scope="module")
def setup(tiny_r1_tokenizer):
    fmt, trace = _trace(tiny_r1_tokenizer)
    model = tiny_model(
        "qwen2",
        vocab_size=len(tiny_r1_tokenizer),
        num_hidden_layers=2,
        initializer_range=0.5,
        eos_token_id=tiny_r1_tokenizer.eos_token_id,
    ).double()
    return model, fmt, trace


def _value(model, fmt, trace, alpha: torch.Tensor) -> float:
    target = answer_target_ids(fmt, PROBLEM.answer)
    ids = text_context(fmt, trace, [True] * len(trace.steps)) + target
    scale = step_key_scale(alpha, trace, len(ids))
    with torch.no_grad():
        return float(knockout_logprob(model, ids, len(target), trace.steps[-1].end, scale))


def test_scale_one_is_the_plain_forward(setup) -> None:
    model, fmt, trace = setup
    target = answer_target_ids(fmt, PROBLEM.answer)
    ids = text_context(fmt, trace, [True] * len(trace.steps)) + target
    ones = torch.ones(len(trace.steps), dtype=torch.float64)
    assert _value(model, fmt, trace, ones) == pytest.approx(
        answer_logprob(model, ids, len(target)), abs=1e-8
    )


def test_gradients_match_finite_differences_of_the_knockout(setup) -> None:
    model, fmt, trace = setup
    scorer = SCORERS.build("attribution")
    grads = scorer.gradients(model, trace, fmt, PROBLEM.answer)
    n = len(trace.steps)
    # RMSNorm runs in float32 even in a float64 model: a smaller step drowns in its rounding.
    eps = 1e-3
    for s in range(n):
        up, down = torch.ones(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
        up[s] += eps
        down[s] -= eps
        central = (_value(model, fmt, trace, up) - _value(model, fmt, trace, down)) / (2 * eps)
        assert grads[s] == pytest.approx(central, rel=1e-3, abs=1e-5)
    assert any(abs(g) > 1e-4 for g in grads)  # the knockout does reach the answer
    # The knockout itself (alpha_s = 0) moves log p: the gradient estimates a real effect.
    zero = torch.ones(n, dtype=torch.float64)
    zero[0] = 0.0
    assert _value(model, fmt, trace, zero) != pytest.approx(
        _value(model, fmt, trace, torch.ones(n, dtype=torch.float64)), abs=1e-9
    )
    scores = scorer.score(model, trace, fmt, PROBLEM.answer)
    assert len(scores) == n and abs(sum(scores) - 1) < 1e-9


def test_oracle_refused_online_and_needs_the_answer(setup) -> None:
    model, fmt, trace = setup
    scorer = SCORERS.build("attribution:answer=reference")
    assert scorer.reads_gold and scorer.oracle_on_teacher_forced
    assert "reference answer" in scorer.online_problem()
    assert "after the finished reasoning" in SCORERS.build("attribution").online_problem()
    with pytest.raises(ValueError, match="needs the reference answer"):
        scorer.score(model, trace, fmt, None)
