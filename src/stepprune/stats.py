"""Statistics over problems: pass@1, bootstrap confidence intervals, paired differences.

    Records -> pass_at_1() -> {problem_id: mean correctness over samples}
            -> bootstrap_ci() / paired_delta() -> 95% intervals over problems

This is the one bootstrap of the project's aggregation: ``resample_indices`` draws the
replicates and ``percentile_interval`` reads the interval off them, with one default number of
resamples (``DEFAULT_RESAMPLES``) and level (``DEFAULT_LEVEL``). A statistic that is not a mean
(an AUROC over traces, say) resamples its units with the same two functions.

The unit of resampling is the problem, not the sample: samples of one problem are correlated
(same question, same difficulty), so resampling them as if independent would give intervals that
are too narrow. Every function is seeded and deterministic: the same inputs give the same
interval on every machine (numpy's ``default_rng`` stream is stable across platforms).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from stepprune.schema import Record

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


def per_problem_means(outcomes: Iterable[tuple[str, float]]) -> dict[str, float]:
    """The mean value of each problem over its ``(problem_id, value)`` pairs (its samples).

    Problems keep their first-seen order, so reports list problems in run order.
    """
    values: dict[str, list[float]] = defaultdict(list)
    for problem_id, value in outcomes:
        values[problem_id].append(float(value))
    return {pid: sum(items) / len(items) for pid, items in values.items()}


def pass_at_1(records: Iterable[Record]) -> dict[str, float]:
    """pass@1 of each problem: the mean correctness over its samples.

    ``records`` should hold one threshold of one scorer and mode (callers group first); several
    records of the same problem are its samples.
    """
    return per_problem_means((r.problem_id, 1.0 if r.correct else 0.0) for r in records)


def _check(n_resamples: int, level: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"bootstrap: n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap: level must be in (0, 1), got {level}")


def resample_indices(
    n_units: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """Bootstrap replicates of ``n_units`` units: ``(n_resamples, n_units)`` indices drawn with
    replacement, one row per replicate, from a generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_units, size=(n_resamples, n_units))


def percentile_interval(
    estimates: Sequence[float] | np.ndarray, level: float
) -> tuple[float, float]:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of replicate estimates."""
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(np.asarray(estimates, dtype=float), [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    per_problem_values: Sequence[float],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``per_problem_values``.

    Problems are resampled with replacement ``n_resamples`` times; the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means. With all values
    equal it collapses to that value; with one problem it is that problem's value (a bootstrap
    cannot show uncertainty it has no data for: report the number of problems beside it).

    Raises:
        ValueError: no values, ``n_resamples < 1``, or ``level`` outside (0, 1).
    """
    values = np.asarray(per_problem_values, dtype=float)
    if values.size == 0:
        raise ValueError("bootstrap_ci: no values (no problems to resample)")
    _check(n_resamples, level)
    if values.min() == values.max():
        # Nothing varies: the interval is the value itself. Returned directly because the mean
        # of n copies of a float can differ from it by one ulp (0.1 + 0.1 + 0.1 != 0.3).
        return float(values[0]), float(values[0])
    means = values[resample_indices(values.size, n_resamples, seed)].mean(axis=1)
    return percentile_interval(means, level)


def paired_delta(
    a: Mapping[str, float],
    b: Mapping[str, float],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> tuple[float, tuple[float, float]]:
    """Mean of ``a[p] - b[p]`` over the problems both have, with its bootstrap interval.

    Pairing removes the between-problem variance (hard problems are hard under both
    conditions), so the interval of the difference is much narrower than the two separate
    intervals suggest. Problems present in only one of ``a`` and ``b`` are left out: a paired
    difference needs both halves of the pair.

    Returns:
        ``(mean_delta, (low, high))``.

    Raises:
        ValueError: ``a`` and ``b`` share no problem.
    """
    shared = [pid for pid in a if pid in b]
    if not shared:
        raise ValueError("paired_delta: the two conditions share no problem")
    deltas = [a[pid] - b[pid] for pid in shared]
    return float(np.mean(deltas)), bootstrap_ci(deltas, n_resamples, seed, level)
