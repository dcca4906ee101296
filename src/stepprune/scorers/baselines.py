"""Baseline scorers that every attention variant must beat: random, length, position, uniform,
and form (the count of numbers and ``=`` signs in a step: the surface cue of a calculation)."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

from stepprune.schema import Step, Trace
from stepprune.scorers.base import SCORERS, Scorer, normalise


class StepsOnly(Scorer):
    """Scorers that read the steps alone (no model): they score cached steps online too."""

    def score(self, model, trace: Trace, fmt=None, gold=None) -> list[float]:
        return self.score_steps(trace.steps, f"{trace.problem_id}:{trace.sample}")

    def score_cache(self, model, fmt, state, steps: list[Step]) -> list[float]:
        # Online checkpoints of one trace see different step sets: seed on their positions.
        return self.score_steps(steps, ",".join(str(s.start) for s in steps))

    def online_problem(self) -> str | None:
        return None

    def score_steps(self, steps: list[Step], key: str) -> list[float]:
        raise NotImplementedError


@SCORERS.register("random")
@dataclass(frozen=True)
class RandomScorer(StepsOnly):
    """Seeded random importances: the control that every other scorer must beat."""

    seed: int = 0

    def score_steps(self, steps: list[Step], key: str) -> list[float]:
        # A stable per-trace seed: the same trace gets the same scores in every run, and
        # different traces get different ones.
        seed = zlib.crc32(f"{self.seed}:{key}".encode())
        return normalise(np.random.default_rng(seed).random(len(steps)))


@SCORERS.register("length")
@dataclass(frozen=True)
class LengthScorer(StepsOnly):
    """Importance proportional to the step's token count (what summed attention tracks)."""

    def score_steps(self, steps: list[Step], key: str) -> list[float]:
        return normalise(np.array([s.num_tokens for s in steps], dtype=float))


@SCORERS.register("position")
@dataclass(frozen=True)
class PositionScorer(StepsOnly):
    """Importance growing linearly with position: recent steps matter most."""

    def score_steps(self, steps: list[Step], key: str) -> list[float]:
        return normalise(np.arange(1, len(steps) + 1, dtype=float))


@SCORERS.register("uniform")
@dataclass(frozen=True)
class UniformScorer(StepsOnly):
    """Every step equally important: no step can be told apart, so nothing is pruned."""

    def score_steps(self, steps: list[Step], key: str) -> list[float]:
        return normalise(np.ones(len(steps)))


_NUMBER = re.compile(r"\d+")


@SCORERS.register("form")
@dataclass(frozen=True)
class FormScorer(StepsOnly):
    """Importance = the number of numbers (runs of digits) plus the number of ``=`` signs in
    the step's text: what a step looks like, not what it does. On the causal planted set this
    free regex ranks necessary steps above planted ones (AUROC about 0.95); a ground truth
    whose labels it cannot predict (the matched set) needs it near 0.5."""

    def score_steps(self, steps: list[Step], key: str) -> list[float]:
        counts = [len(_NUMBER.findall(s.text)) + s.text.count("=") for s in steps]
        return normalise(np.array(counts, dtype=float))
