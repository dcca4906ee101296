"""Pruning policies: which steps to keep at a threshold, given their importances."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from stepprune.registry import Fraction, Plugin, Registry, SpecError


class PruningPolicy(Plugin, ABC):
    """Which steps to keep at a threshold, given their importances.

    ``keep`` checks the threshold and the scores once for every policy; a policy implements
    ``choose`` on a non-empty array of finite scores.
    """

    def keep(self, importances: Sequence[float], threshold: float) -> list[bool]:
        """A keep flag per step, in step order; at least one step is kept when any exist."""
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"{self.name} threshold must be in [0, 1), got {threshold}")
        scores = np.asarray(importances, dtype=float)
        if scores.size == 0:
            return []
        if not np.isfinite(scores).all():
            # argmax and quantiles would keep the NaN step and prune the best one.
            raise ValueError(f"{self.name}: importances must be finite numbers, got {scores}")
        return self.choose(scores, threshold).tolist()

    @abstractmethod
    def choose(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        """Boolean keep mask ``(steps,)`` for finite ``scores`` ``(steps,)``, ``steps >= 1``."""


POLICIES: Registry[PruningPolicy] = Registry("pruning policy")


@POLICIES.register("percentile")
@dataclass(frozen=True)
class PercentilePolicy(PruningPolicy):
    """The notebook's rule: drop steps scoring below the ``threshold``-quantile of the scores.

    ``threshold`` is a fraction in [0, 1): 0 keeps everything, 0.5 drops the steps below the
    median (linear interpolation between scores, numpy's default). Steps equal to the cut-off are
    kept, so ties are never split and all-equal scores keep every step. The most important step
    is always kept.
    """

    def choose(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        cutoff = np.quantile(scores, threshold)
        keep = scores >= cutoff
        keep[int(np.argmax(scores))] = True
        return keep


def normalised_entropy(importances: Sequence[float]) -> float:
    """Entropy of the importance distribution divided by its maximum, log(steps): 1 for
    uniform scores, near 0 when one step holds all the importance."""
    p = np.clip(np.asarray(importances, dtype=float), 0.0, None)  # as TRAAC: negatives are 0
    if p.size <= 1:
        return 1.0
    p = p / p.sum() if p.sum() > 0 else np.full(p.size, 1.0 / p.size)
    nonzero = p[p > 0]
    return float(-(nonzero * np.log(nonzero)).sum() / np.log(p.size))


# TRAAC's compression rate by difficulty (the pass rate of the problem's rollouts).
TRAAC_RATES = {"easy": 0.6, "medium": 0.4, "hard": 0.2}
# TRAAC's code never evicts more than this share of the steps.
TRAAC_MAX_EVICTED = 0.8


@POLICIES.register("adaptive")
@dataclass(frozen=True)
class AdaptivePolicy(PruningPolicy):
    """TRAAC's adaptive eviction (arXiv 2510.01581; joykirat18/TRAAC), on step scores.

    ``U`` is the normalised entropy of the step scores (:func:`normalised_entropy`). When
    ``U > gate`` (default 0.8, TRAAC's) importance is too uniform to tell steps apart and
    nothing is evicted; otherwise the ``floor(n * min(r * (1 - U), 0.8))`` lowest-scoring of
    the ``n`` steps are evicted, as TRAAC's ``redundant_token_eviction.py`` does: its cap of 80%
    binds only for rates above 0.8, and among tied scores the earlier step goes first (its
    stable ascending sort). At least one step is kept.

    The compression rate ``r``: TRAAC takes 0.6 / 0.4 / 0.2 for easy / medium / hard problems,
    graded by the pass rate of the training rollouts. A policy sees only the scores, so that
    grading is out of reach here: ``difficulty=easy|medium|hard`` sets TRAAC's rate by hand,
    ``r=`` any fixed rate, and by default (``difficulty=threshold``) the pruning threshold is the
    rate, so the threshold sweep spans rates 0 (keep everything) to below 1. With a fixed rate,
    threshold 0 still keeps every step (the unpruned reference of every run).

    TRAAC reads its scores as per-token means over the first half of the layers from
    ``</think>``: ``--scorer attention:query=reasoning_end,layers=first-half,agg=mean``.
    """

    gate: Fraction = 0.8
    difficulty: Literal["threshold", "easy", "medium", "hard"] = "threshold"
    r: Fraction | None = None

    def __post_init__(self) -> None:
        if self.r is not None and self.difficulty != "threshold":
            raise SpecError("adaptive: give r= or difficulty=, not both")

    def rate(self, threshold: float) -> float:
        """The compression rate ``r`` at ``threshold``."""
        if self.r is not None:
            return self.r
        return TRAAC_RATES.get(self.difficulty, threshold)

    def choose(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        keep = np.ones(scores.size, dtype=bool)
        uniformity = normalised_entropy(scores)
        if threshold == 0.0 or uniformity > self.gate:
            return keep
        share = min(self.rate(threshold) * (1.0 - uniformity), TRAAC_MAX_EVICTED)
        evict = min(int(scores.size * share), scores.size - 1)
        # Lowest first; a stable ascending sort evicts the earlier of tied steps first.
        keep[np.argsort(scores, kind="stable")[:evict]] = False
        return keep
