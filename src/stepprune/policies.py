"""Pruning policies: which steps to keep at a threshold, given their importances."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stepprune.registry import Plugin, Registry


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
    p = np.asarray(importances, dtype=float)
    if p.size <= 1:
        return 1.0
    p = p / p.sum() if p.sum() > 0 else np.full(p.size, 1.0 / p.size)
    nonzero = p[p > 0]
    return float(-(nonzero * np.log(nonzero)).sum() / np.log(p.size))


@POLICIES.register("adaptive")
@dataclass(frozen=True)
class AdaptivePolicy(PruningPolicy):
    """TRAAC's adaptive rule: the keep fraction follows the normalised entropy of the scores.

    Diffuse importance (entropy near 1) means every step carries something, so little is pruned;
    concentrated importance means few steps matter, so more are pruned. The threshold caps the
    pruned fraction: ``keep = max(H, 1 - threshold)`` of the steps, rounded up, the
    highest-scoring ones (earlier steps win ties). Threshold 0 keeps everything.
    """

    def choose(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        fraction = max(normalised_entropy(scores), 1.0 - threshold)
        count = max(1, int(np.ceil(fraction * scores.size - 1e-9)))
        order = np.argsort(-scores, kind="stable")[:count]
        keep = np.zeros(scores.size, dtype=bool)
        keep[order] = True
        return keep
