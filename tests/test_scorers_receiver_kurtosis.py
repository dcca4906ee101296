"""Thought Anchors' receiver heads: the step-averaged attention matrix against eager attention,
vertical scores and kurtosis against the formulas written out by hand, and the choice of heads
by mean kurtosis over traces."""

from __future__ import annotations

import math

import pytest
import torch

from stepprune.scorers.receiver import (
    KURTOSIS_CRITERION,
    calibrate_receiver_heads,
    excess_kurtosis,
    step_attention_matrix,
    thought_anchors_receiver_heads,
    vertical_scores,
)
from tests.conftest import eager_attentions, tiny_model
from tests.test_scorer_variants import _trace


def _loop_vertical(matrix: list[list[float]], proximity: int) -> list[float]:
    n = len(matrix)
    out = []
    for j in range(n):
        values = [matrix[i][j] for i in range(n) if i >= j + proximity]
        out.append(sum(values) / len(values) if values else math.nan)
    return out


def _loop_kurtosis(values: list[float]) -> float:
    xs = [x for x in values if not math.isnan(x)]
    mean = sum(xs) / len(xs)
    m2 = sum((x - mean) ** 2 for x in xs) / len(xs)
    m4 = sum((x - mean) ** 4 for x in xs) / len(xs)
    return m4 / m2**2 - 3


def test_vertical_scores_and_kurtosis_follow_the_formulas() -> None:
    generator = torch.Generator().manual_seed(0)
    matrix = torch.rand(9, 9, generator=generator, dtype=torch.float64).tril()
    got = vertical_scores(matrix)  # proximity 4, as Thought Anchors
    expected = _loop_vertical(matrix.tolist(), 4)
    assert torch.isnan(got[5:]).all() and all(math.isnan(x) for x in expected[5:])
    assert got[:5].tolist() == pytest.approx(expected[:5], abs=1e-12)
    assert float(excess_kurtosis(got)) == pytest.approx(_loop_kurtosis(expected), abs=1e-12)
    # A value scipy.stats.kurtosis gives (Fisher, biased): [0, 0, 0, 1] -> -2/3.
    assert float(excess_kurtosis(torch.tensor([0.0, 0.0, 0.0, 1.0]))) == pytest.approx(-2 / 3)
    # One spike among flat values: heavy-tailed, positive kurtosis.
    spike = torch.tensor([0.1] * 9 + [0.9], dtype=torch.float64)
    assert float(excess_kurtosis(spike)) > 3
    assert math.isnan(float(excess_kurtosis(torch.tensor([1.0, math.nan]))))  # one value


@pytest.fixture(scope="module")
def setup(r1_tokenizer):
    fmt, trace = _trace(r1_tokenizer)
    model = tiny_model("qwen2", num_hidden_layers=2, initializer_range=0.5)
    return model, fmt, trace


def test_step_attention_matrix_is_the_mean_of_eager_blocks(setup) -> None:
    model, _, trace = setup
    got = step_attention_matrix(model, trace)
    attentions = eager_attentions(model, trace.all_ids[: trace.reasoning_end])
    n = len(trace.steps)
    assert got.shape == (2, 4, n, n)
    for layer, attention in enumerate(attentions):
        for head in range(4):
            for i, a in enumerate(trace.steps):
                for j, b in enumerate(trace.steps):
                    block = attention[0, head, a.start : a.end, b.start : b.end]
                    assert float(got[layer, head, i, j]) == pytest.approx(
                        float(block.double().mean()), abs=1e-6
                    )
    assert float(got[..., 0, 1:].abs().max()) < 1e-12  # causal: no attention to later steps


def test_receivers_are_the_heads_of_highest_mean_kurtosis(setup, r1_tokenizer) -> None:
    model, fmt, trace = setup
    other = _trace(r1_tokenizer)[1]
    other.steps = other.steps[:3]  # a second trace with another step set
    # Proximity 1 so these short traces have enough vertical scores for a kurtosis.
    per_trace = [
        excess_kurtosis(vertical_scores(step_attention_matrix(model, t), 1)) for t in (trace, other)
    ]
    mean = torch.stack(per_trace).nanmean(0)
    finite = torch.nan_to_num(mean, nan=-math.inf).flatten()
    expected = [divmod(int(i), 4) for i in torch.argsort(finite, descending=True)[:3]]
    got = thought_anchors_receiver_heads(model, [trace, other], top_k=3, proximity=1)
    assert got == expected
    # The layers argument limits the candidates.
    only = thought_anchors_receiver_heads(model, [trace, other], 3, proximity=1, layers=[1])
    assert {layer for layer, _ in only} == {1}
    # A trace too short for any kurtosis at the paper's proximity is refused.
    with pytest.raises(ValueError, match="at least 6 steps"):
        thought_anchors_receiver_heads(model, [trace])
    with pytest.raises(ValueError, match="at least 6 steps"):
        calibrate_receiver_heads(model, [trace], fmt, 20, criterion="kurtosis")
    assert "kurtosis" in KURTOSIS_CRITERION
