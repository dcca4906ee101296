"""Baseline scorers that every attention variant must beat: random, length, position, uniform."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from stepprune.schema import Trace
from stepprune.scorers.base import SCORERS, normalise


@SCORERS.register("random")
@dataclass(frozen=True)
class RandomScorer:
    """Seeded random importances: the control that every other scorer must beat."""

    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def spec(self) -> str:
        return f"random:seed={self.seed}"

    def score(self, model, trace: Trace, fmt=None, gold=None) -> list[float]:
        # A stable per-trace seed: the same trace gets the same scores in every run.
        key = zlib.crc32(f"{self.seed}:{trace.problem_id}:{trace.sample}".encode())
        return normalise(np.random.default_rng(key).random(len(trace.steps)))


@SCORERS.register("length")
@dataclass(frozen=True)
class LengthScorer:
    """Importance proportional to the step's token count (what summed attention tracks)."""

    @property
    def spec(self) -> str:
        return "length"

    def score(self, model, trace: Trace, fmt=None, gold=None) -> list[float]:
        return normalise(np.array([s.num_tokens for s in trace.steps], dtype=float))


@SCORERS.register("position")
@dataclass(frozen=True)
class PositionScorer:
    """Importance growing linearly with position: recent steps matter most."""

    @property
    def spec(self) -> str:
        return "position"

    def score(self, model, trace: Trace, fmt=None, gold=None) -> list[float]:
        return normalise(np.arange(1, len(trace.steps) + 1, dtype=float))


@SCORERS.register("uniform")
@dataclass(frozen=True)
class UniformScorer:
    """Every step equally important: no step can be told apart, so nothing is pruned."""

    @property
    def spec(self) -> str:
        return "uniform"

    def score(self, model, trace: Trace, fmt=None, gold=None) -> list[float]:
        return normalise(np.ones(len(trace.steps)))
