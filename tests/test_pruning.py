"""The percentile rule and its edge cases."""

from __future__ import annotations

import math

import pytest

from stepprune.policies import POLICIES, PercentilePolicy
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


def _traac_evicted(scores: list[float], r: float, gate: float = 0.8) -> set[int]:
    """TRAAC's rule written out from the paper and its code: U = entropy / log n of the
    normalised scores; U > gate evicts nothing, else the floor(n min(r (1 - U), 0.8)) lowest
    steps go, the earlier of tied steps first."""
    n, total = len(scores), sum(scores)
    u = -sum(s / total * math.log(s / total) for s in scores if s > 0) / math.log(n)
    if u > gate:
        return set()
    count = math.floor(n * min(r * (1 - u), 0.8))
    lowest = sorted(range(n), key=lambda i: (scores[i], i))
    return set(lowest[:count])


FIXTURE = [
    [0.91, 0.03, 0.03, 0.03],
    [0.26, 0.24, 0.25, 0.25],
    [0.5, 0.3, 0.1, 0.05, 0.05],
    [0.7, 0.1, 0.1, 0.05, 0.03, 0.02],
    [0.4, 0.4, 0.05, 0.05, 0.05, 0.05],
    [0.98, 0.01, 0.01],
]


@pytest.mark.parametrize("scores", FIXTURE)
def test_adaptive_is_traac_eviction(scores: list[float]) -> None:
    for difficulty, r in (("easy", 0.6), ("medium", 0.4), ("hard", 0.2)):
        keep = POLICIES.build(f"adaptive:difficulty={difficulty}").keep(scores, 0.3)
        assert {i for i, k in enumerate(keep) if not k} == _traac_evicted(scores, r)
    for t in (0.1, 0.5, 0.9):  # the default: the threshold is the rate
        keep = POLICIES.build("adaptive").keep(scores, t)
        assert {i for i, k in enumerate(keep) if not k} == _traac_evicted(scores, t)
    fixed = POLICIES.build("adaptive:r=0.9,gate=0.95").keep(scores, 0.1)
    assert {i for i, k in enumerate(fixed) if not k} == _traac_evicted(scores, 0.9, 0.95)
    assert POLICIES.build("adaptive:difficulty=easy").keep(scores, 0.0) == [True] * len(scores)


def test_adaptive_gate_options_and_spec() -> None:
    adaptive = POLICIES.build("adaptive")
    assert adaptive.spec == "adaptive:gate=0.8,difficulty=threshold,r=None"
    # Uniform-ish scores (U > 0.8) evict nothing however high the rate.
    assert adaptive.keep([0.26, 0.24, 0.25, 0.25], 0.9) == [True] * 4
    assert adaptive.keep([0.98, 0.01, 0.01], 0.9) == [True, False, False]  # floor(3 x 0.8)
    with pytest.raises(SpecError, match="not both"):
        POLICIES.build("adaptive:r=0.5,difficulty=easy")
    with pytest.raises(SpecError):
        POLICIES.build("adaptive:gate=1.5")


def test_traac_evicts_at_most_80_percent_of_the_steps() -> None:
    """U = 0.131 for one dominant step among 11: r = 0.99 gives floor(11 x 0.861) = 9 evicted
    without TRAAC's cap, floor(11 x 0.8) = 8 with it."""
    scores = [0.95] + [0.005] * 10
    keep = POLICIES.build("adaptive:r=0.99").keep(scores, 0.5)
    assert keep.count(False) == 8 == len(_traac_evicted(scores, 0.99))
    # The earlier of tied steps go first: the last two of the ten ties stay.
    assert keep == [True] + [False] * 8 + [True, True]


def test_traac_uniformity_reads_negative_scores_as_zero() -> None:
    """TRAAC clips negative importances to 0 before its entropy (a NaN otherwise)."""
    from stepprune.policies import normalised_entropy

    assert normalised_entropy([-0.5, 0.5, 0.5]) == pytest.approx(normalised_entropy([0, 1, 1]))
    assert normalised_entropy([-0.5, 0.5, 0.5]) == pytest.approx(math.log(2) / math.log(3))
