"""Tests of stepprune.stats on cases whose answer is known without the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stepprune.schema import Record
from stepprune.stats import (
    DEFAULT_RESAMPLES,
    bootstrap_ci,
    paired_delta,
    pass_at_1,
    per_problem_means,
    percentile_interval,
    resample_indices,
)


def record(problem_id: str, sample: int, correct: bool) -> Record:
    return Record(
        problem_id=problem_id, sample=sample, threshold=0.0, mode="text", scorer="attention",
        policy="percentile", kept_steps=[0], num_steps=1, num_kept_steps=1, reasoning_tokens=10,
        tokens_kept=10, reasoning_chars=40, chars_kept=40, context_tokens=20, answer_text="",
        answer_tokens=1, answer_truncated=False, gold="1", prediction="1", correct=correct,
    )  # fmt: skip


def test_pass_at_1_is_mean_over_samples_in_first_seen_order() -> None:
    records = [
        record("b", 0, True),
        record("a", 0, True),
        record("b", 1, False),
        record("a", 1, True),
        record("b", 2, False),
        record("c", 0, False),
    ]
    result = pass_at_1(records)
    assert list(result) == ["b", "a", "c"]
    assert result == pytest.approx({"b": 1 / 3, "a": 1.0, "c": 0.0})


@pytest.mark.parametrize("value", [0.0, 1.0, 0.3, 2 / 3])
def test_all_equal_values_collapse_to_the_value(value: float) -> None:
    # 0.3 and 2/3 are not exact in binary: the mean of copies may differ by an ulp, the
    # interval must still be exactly the value.
    assert bootstrap_ci([value] * 7) == (value, value)


def test_single_problem_collapses() -> None:
    assert bootstrap_ci([0.25]) == (0.25, 0.25)


def test_binary_half_matches_normal_approximation() -> None:
    values = [1.0] * 50 + [0.0] * 50
    low, high = bootstrap_ci(values)
    half_width = 1.959964 * math.sqrt(0.5 * 0.5 / 100)  # 0.098
    assert low == pytest.approx(0.5 - half_width, abs=0.02)
    assert high == pytest.approx(0.5 + half_width, abs=0.02)
    assert low < 0.5 < high


def test_skewed_case_matches_normal_approximation() -> None:
    # p = 0.2, n = 400: SE 0.02, so about [0.161, 0.239].
    values = [1.0] * 80 + [0.0] * 320
    low, high = bootstrap_ci(values, n_resamples=4000)
    half_width = 1.959964 * math.sqrt(0.2 * 0.8 / 400)
    assert low == pytest.approx(0.2 - half_width, abs=0.01)
    assert high == pytest.approx(0.2 + half_width, abs=0.01)


def test_level_changes_width_and_order_does_not_matter_for_width() -> None:
    rng = np.random.default_rng(1)
    values = rng.random(60).tolist()
    low90, high90 = bootstrap_ci(values, level=0.90)
    low99, high99 = bootstrap_ci(values, level=0.99)
    assert low99 < low90 < np.mean(values) < high90 < high99


def test_seeded_and_deterministic() -> None:
    # Continuous values: with few distinct values two seeds can hit the same quantiles.
    values = np.random.default_rng(7).random(30).tolist()
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(list(values), seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"per_problem_values": []}, "no values"),
        ({"per_problem_values": [1.0, 0.0], "level": 1.0}, "level"),
        ({"per_problem_values": [1.0, 0.0], "level": 0.0}, "level"),
        ({"per_problem_values": [1.0, 0.0], "n_resamples": 0}, "n_resamples"),
    ],
)
def test_bootstrap_rejects_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(**kwargs)


def test_paired_delta_of_identical_inputs_is_zero() -> None:
    a = {"p1": 1.0, "p2": 0.0, "p3": 0.5, "p4": 0.25}
    assert paired_delta(a, dict(a)) == (0.0, (0.0, 0.0))


def test_paired_delta_of_a_constant_shift_is_that_shift() -> None:
    b = {f"p{i}": i / 20 for i in range(10)}
    a = {k: v + 0.25 for k, v in b.items()}
    mean, (low, high) = paired_delta(a, b)
    assert mean == pytest.approx(0.25)
    assert low == pytest.approx(0.25) and high == pytest.approx(0.25)


def test_paired_delta_uses_shared_problems_only_and_is_a_minus_b() -> None:
    a = {"p1": 1.0, "p2": 1.0, "only_a": 0.0}
    b = {"p2": 0.0, "p1": 0.5, "only_b": 1.0}
    mean, (low, high) = paired_delta(a, b)
    # Deltas 0.5 (p1) and 1.0 (p2): the mean is 0.75, resampled means lie in [0.5, 1.0].
    assert mean == pytest.approx(0.75)
    assert 0.5 <= low <= mean <= high <= 1.0
    assert (low, high) == bootstrap_ci([0.5, 1.0])


def test_pairing_narrows_the_interval_of_correlated_conditions() -> None:
    # Problem difficulty varies a lot; condition a is b plus a small consistent gain.
    rng = np.random.default_rng(0)
    b = {f"p{i}": float(v) for i, v in enumerate(rng.random(50) * 0.8)}
    a = {k: v + 0.1 + 0.02 * rng.standard_normal() for k, v in b.items()}
    mean, (low, high) = paired_delta(a, b)
    a_low, a_high = bootstrap_ci(list(a.values()))
    assert mean == pytest.approx(0.1, abs=0.02)
    assert low > 0.05  # clearly positive when paired ...
    assert (high - low) < (a_high - a_low) / 3  # ... though each condition alone is wide


def test_paired_delta_without_shared_problems_raises() -> None:
    with pytest.raises(ValueError, match="share no problem"):
        paired_delta({"a": 1.0}, {"b": 1.0})


def test_per_problem_means_of_pairs() -> None:
    pairs = [("b", 1.0), ("a", 0.0), ("b", 0.0), ("a", 1.0), ("a", 1.0)]
    assert per_problem_means(pairs) == pytest.approx({"b": 0.5, "a": 2 / 3})
    assert list(per_problem_means(pairs)) == ["b", "a"]
    assert per_problem_means([]) == {}


def test_resample_indices_shape_range_and_seed() -> None:
    indices = resample_indices(7, n_resamples=50, seed=1)
    assert indices.shape == (50, 7)
    assert indices.min() >= 0 and indices.max() <= 6
    assert (indices == resample_indices(7, 50, seed=1)).all()
    assert not (indices == resample_indices(7, 50, seed=2)).all()
    assert resample_indices(3).shape == (DEFAULT_RESAMPLES, 3)


def test_percentile_interval_of_known_estimates() -> None:
    estimates = np.arange(1001) / 1000  # 0.000 ... 1.000: quantiles are the levels themselves
    assert percentile_interval(estimates, 0.95) == pytest.approx((0.025, 0.975))
    assert percentile_interval(estimates, 0.5) == pytest.approx((0.25, 0.75))


def test_bootstrap_ci_is_the_percentile_interval_of_resampled_means() -> None:
    # One bootstrap: bootstrap_ci is the two shared pieces put together, nothing else.
    values = np.random.default_rng(3).random(25)
    means = values[resample_indices(25, 500, seed=4)].mean(axis=1)
    expected = percentile_interval(means, 0.9)
    assert bootstrap_ci(values.tolist(), n_resamples=500, seed=4, level=0.9) == expected
