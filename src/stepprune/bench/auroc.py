"""Ranking statistics of ``bench scorers``: AUROC of step scores on within-trace ranks, and its
bootstrap interval over traces.

    scores, labels per trace -> within-trace ranks -> pooled Mann-Whitney AUROC
                             -> auroc_bootstrap_ci: resample traces, recompute the AUROC

The interval draws its replicates and reads its quantiles with the project's one bootstrap
(``stats.resample_indices``, ``stats.percentile_interval``); what it resamples is traces, and
what it recomputes per replicate is an AUROC, not a mean, so it cannot be ``stats.bootstrap_ci``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from stepprune.planted import NECESSARY, PLANTED
from stepprune.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, percentile_interval, resample_indices


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (as Mann-Whitney needs)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = ((starts + ends - 1) / 2 + 1)[group]
    return ranks


def within_trace_ranks(scores: Sequence[float]) -> np.ndarray:
    """Percentile ranks in [0, 1] of one trace's scores: 0 for the lowest, 1 for the highest,
    ties sharing their mean rank; a single step gets 0.5."""
    values = np.asarray(scores, dtype=float)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"step scores must be finite, got {list(scores)}")
    if len(values) < 2:
        return np.full(len(values), 0.5)
    return (average_ranks(values) - 1) / (len(values) - 1)


def _positive_mask(labels: Sequence[str]) -> np.ndarray:
    unknown = set(labels) - {NECESSARY, PLANTED}
    if unknown:
        raise ValueError(f"step labels must be {NECESSARY!r} or {PLANTED!r}, got {unknown}")
    return np.array([label == NECESSARY for label in labels], dtype=bool)


def mann_whitney(values: np.ndarray, positive: np.ndarray) -> float:
    """P(positive > negative) + 0.5 P(tie) over all positive-negative pairs; NaN without both."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = float(average_ranks(values)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _prepare(
    scores: Sequence[Sequence[float]], labels: Sequence[Sequence[str]]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} traces of scores but {len(labels)} of labels")
    ranks, positives = [], []
    for trace_scores, trace_labels in zip(scores, labels, strict=True):
        if len(trace_scores) != len(trace_labels):
            raise ValueError(
                f"a trace has {len(trace_scores)} scores but {len(trace_labels)} labels"
            )
        ranks.append(within_trace_ranks(trace_scores))
        positives.append(_positive_mask(trace_labels))
    return ranks, positives


def auroc(scores: Sequence[Sequence[float]], labels: Sequence[Sequence[str]]) -> float:
    """AUROC of necessary (positive) against planted (negative) steps, pooled over traces.

    ``scores[i]`` and ``labels[i]`` are the step scores and labels of trace ``i``. Each trace's
    scores are first turned into percentile ranks within the trace (0 = its lowest step, 1 = its
    highest, ties sharing their mean rank): a scorer is used to rank the steps of one trace
    against each other, and its raw scale is not comparable across traces (scores sum to 1, so a
    trace with many steps has small scores everywhere; pooling raw scores would mostly compare
    traces, not steps). The ranks are pooled and compared with the Mann-Whitney statistic: the
    probability that a random necessary step ranks above a random planted one, ties counting
    one half. So 1 is perfect, 0 perfectly reversed, and 0.5 chance (a constant scorer scores
    exactly 0.5). NaN when either class is absent.
    """
    ranks, positives = _prepare(scores, labels)
    if not ranks:
        return math.nan
    return mann_whitney(np.concatenate(ranks), np.concatenate(positives))


def auroc_bootstrap_ci(
    scores: Sequence[Sequence[float]],
    labels: Sequence[Sequence[str]],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`auroc`, resampling whole traces with replacement.

    Steps of one trace are not independent (they share a problem, a template and the scorer's
    view of that trace), so the unit of resampling is the trace. Resamples that happen to lack a
    class are skipped. Seeded: the same inputs give the same interval.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    ranks, positives = _prepare(scores, labels)
    if not ranks:
        return (math.nan, math.nan)
    estimates = []
    for chosen in resample_indices(len(ranks), n_resamples, seed):
        value = mann_whitney(
            np.concatenate([ranks[i] for i in chosen]),
            np.concatenate([positives[i] for i in chosen]),
        )
        if not math.isnan(value):
            estimates.append(value)
    if not estimates:
        return (math.nan, math.nan)
    return percentile_interval(estimates, level)


def auroc_difference(
    scores_a: Sequence[Sequence[float]],
    scores_b: Sequence[Sequence[float]],
    labels: Sequence[Sequence[str]],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> tuple[float, tuple[float, float]]:
    """``auroc(a) - auroc(b)`` on the same traces, with a paired bootstrap interval.

    Each replicate resamples the traces once and recomputes both AUROCs on that one resample,
    so what the two scorers share (a trace that is easy for both) cancels in the difference:
    the interval of the difference is narrower than two separate intervals suggest, and it is
    the one to read when asking whether scorer a beats scorer b. Resamples that lack a class
    are skipped.

    Returns:
        ``(difference, (low, high))``; NaNs when no trace has both classes.
    """
    if len(scores_a) != len(scores_b):
        raise ValueError(f"{len(scores_a)} traces of scores a but {len(scores_b)} of b")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    ranks_a, positives = _prepare(scores_a, labels)
    ranks_b, _ = _prepare(scores_b, labels)
    if not ranks_a:
        return math.nan, (math.nan, math.nan)
    difference = auroc(scores_a, labels) - auroc(scores_b, labels)
    estimates = []
    for chosen in resample_indices(len(ranks_a), n_resamples, seed):
        positive = np.concatenate([positives[i] for i in chosen])
        a = mann_whitney(np.concatenate([ranks_a[i] for i in chosen]), positive)
        b = mann_whitney(np.concatenate([ranks_b[i] for i in chosen]), positive)
        if not math.isnan(a - b):
            estimates.append(a - b)
    if not estimates:
        return difference, (math.nan, math.nan)
    return difference, percentile_interval(estimates, level)


# -- statistics of `bench scorers --run` --------------------------------------------------------


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of two score lists (ties share their mean rank); NaN when
    there are fewer than two values or either list is constant."""
    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} values against {len(b)}")
    if len(a) < 2:
        return math.nan
    x = average_ranks(np.asarray(a, dtype=float))
    y = average_ranks(np.asarray(b, dtype=float))
    x, y = x - x.mean(), y - y.mean()
    norm = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum()) / norm if norm > 0 else math.nan


def per_problem_mean(values: dict[tuple[str, int], float]) -> dict[str, float]:
    """Mean over the samples of each problem, ignoring NaN; problems with none finite dropped."""
    grouped: dict[str, list[float]] = {}
    for (problem_id, _), value in values.items():
        if not math.isnan(value):
            grouped.setdefault(problem_id, []).append(value)
    return {pid: float(np.mean(v)) for pid, v in grouped.items()}
