"""A scorer written outside the package, in one file: all importance on the last step.

Registered by importing this module (``STEPPRUNE_PLUGINS=tests.plugins.last_step``); nothing in
``stepprune`` lists it.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepprune.registry import PositiveInt
from stepprune.schema import Step
from stepprune.scorers import SCORERS
from stepprune.scorers.baselines import StepsOnly


@SCORERS.register("last-step")
@dataclass(frozen=True)
class LastStepScorer(StepsOnly):
    """Importance ``weight`` on the last step and 1 on each other, normalised."""

    weight: PositiveInt = 3

    def score_steps(self, steps: list[Step], key: str) -> list[float]:
        raw = [1.0] * len(steps)
        if raw:
            raw[-1] = float(self.weight)
        return [r / sum(raw) for r in raw]
