"""Pruning policies: which steps to keep at a threshold, given their importances."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from stepprune.registry import Registry


class PruningPolicy(Protocol):
    @property
    def spec(self) -> str: ...

    def keep(self, importances: Sequence[float], threshold: float) -> list[bool]:
        """A keep flag per step, in step order; at least one step is kept when any exist."""
        ...


POLICIES: Registry[PruningPolicy] = Registry("pruning policy")


@POLICIES.register("percentile")
@dataclass(frozen=True)
class PercentilePolicy:
    """The notebook's rule: drop steps scoring below the ``threshold``-quantile of the scores.

    ``threshold`` is a fraction in [0, 1): 0 keeps everything, 0.5 drops the steps below the
    median (linear interpolation between scores, numpy's default). Steps equal to the cut-off are
    kept, so ties are never split and all-equal scores keep every step. The most important step
    is always kept.
    """

    @property
    def spec(self) -> str:
        return "percentile"

    def keep(self, importances: Sequence[float], threshold: float) -> list[bool]:
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"percentile threshold must be in [0, 1), got {threshold}")
        scores = np.asarray(importances, dtype=float)
        if scores.size == 0:
            return []
        cutoff = np.quantile(scores, threshold)
        keep = scores >= cutoff
        keep[int(np.argmax(scores))] = True
        return keep.tolist()
