"""The percentile rule and its edge cases."""

from __future__ import annotations

import pytest

from stepprune.policies import POLICIES, PercentilePolicy, normalised_entropy
from stepprune.registry import SpecError

policy = PercentilePolicy()


def test_threshold_zero_keeps_everything() -> None:
    assert policy.keep([0.1, 0.5, 0.2, 0.2], 0.0) == [True, True, True, True]


def test_threshold_half_drops_steps_below_the_median() -> None:
    # Median of (0.1, 0.2, 0.3, 0.4) is 0.25: the two lower steps go.
    assert policy.keep([0.4, 0.1, 0.3, 0.2], 0.5) == [True, False, True, False]


def test_odd_count_keeps_the_median_step() -> None:
    assert policy.keep([0.5, 0.1, 0.2, 0.15, 0.05], 0.5) == [True, False, True, True, False]


def test_single_step_is_always_kept() -> None:
    for t in (0.0, 0.3, 0.5, 0.9):
        assert policy.keep([1.0], t) == [True]


def test_all_equal_scores_keep_every_step() -> None:
    assert policy.keep([0.25] * 4, 0.5) == [True] * 4


def test_ties_at_the_cutoff_are_kept_together() -> None:
    # 30th percentile of (0.1, 0.3, 0.3, 0.3) is 0.3: all three tied steps stay.
    assert policy.keep([0.3, 0.1, 0.3, 0.3], 0.3) == [True, False, True, True]


def test_most_important_step_survives_any_threshold() -> None:
    keep = policy.keep([0.9, 0.05, 0.05], 0.99)
    assert keep[0] is True and sum(keep) >= 1


def test_more_pruning_at_higher_thresholds() -> None:
    scores = [0.02, 0.3, 0.08, 0.15, 0.2, 0.05, 0.2]
    kept = [sum(policy.keep(scores, t)) for t in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)]
    assert kept == sorted(kept, reverse=True)
    assert kept[0] == len(scores) and kept[-1] < len(scores)


def test_no_steps() -> None:
    assert policy.keep([], 0.5) == []


@pytest.mark.parametrize("threshold", [-0.1, 1.0, 1.5])
def test_threshold_out_of_range(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        policy.keep([0.5, 0.5], threshold)


def test_registry_builds_by_name_and_rejects_unknown() -> None:
    assert isinstance(POLICIES.build("percentile"), PercentilePolicy)
    with pytest.raises(SpecError, match="unknown pruning policy 'nope'"):
        POLICIES.build("nope")


def test_adaptive_prunes_more_when_importance_is_concentrated() -> None:
    adaptive = POLICIES.build("adaptive")
    concentrated = [0.91, 0.03, 0.03, 0.03]
    diffuse = [0.26, 0.24, 0.25, 0.25]
    assert normalised_entropy(diffuse) > 0.99 and normalised_entropy(concentrated) < 0.3
    assert adaptive.keep(diffuse, 0.5) == [True] * 4
    # Entropy ~0.28 would keep 2 of 4; the threshold caps pruning at half: keep 2.
    assert adaptive.keep(concentrated, 0.5) == [True, True, False, False]
    # A tighter cap keeps more.
    assert sum(adaptive.keep(concentrated, 0.2)) == 4  # ceil(0.8 * 4)
    assert adaptive.keep(concentrated, 0.0) == [True] * 4
    # Fairly diffuse scores (entropy 0.94) keep all 3 steps even under a loose cap.
    assert adaptive.keep([0.2, 0.5, 0.3], 0.9) == [True] * 3
    assert adaptive.keep([0.98, 0.01, 0.01], 0.9) == [True, False, False]
