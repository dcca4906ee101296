"""Step scorers: importance of each reasoning step of a trace, normalised to sum to 1.

Select one with a spec string, e.g. ``attention``, ``attention:layers=first-half,agg=mean``,
``random:seed=3``, ``length``, ``position``, ``uniform``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from transformers import PreTrainedModel

from stepprune.attention import last_token_attention
from stepprune.registry import Registry, SpecError
from stepprune.schema import Trace

LAYER_CHOICES = ("all", "first-half", "last-half")
AGGREGATIONS = ("sum", "mean")


class Scorer(Protocol):
    """Scores the steps of a trace (the trace must already be segmented)."""

    @property
    def spec(self) -> str: ...

    def score(self, model: PreTrainedModel, trace: Trace) -> list[float]:
        """One non-negative importance per step, summing to 1 (empty list for no steps)."""
        ...


SCORERS: Registry[Scorer] = Registry("scorer")


def normalise(values: np.ndarray) -> list[float]:
    """Scale non-negative values to sum 1; all-zero input becomes uniform."""
    total = float(values.sum())
    if len(values) == 0:
        return []
    if total <= 0:
        return [1.0 / len(values)] * len(values)
    return (values / total).tolist()


@SCORERS.register("attention")
@dataclass(frozen=True)
class AttentionScorer:
    """Attention that the last token pays to each step (the original notebook's score).

    Attention rows of the last position of ``prompt_ids + output_ids`` are captured exactly
    (no full attention matrix), averaged over heads and the chosen layers, then aggregated over
    each step's tokens (``sum``, or ``mean`` to remove the length effect) and normalised.
    """

    layers: str = "all"
    agg: str = "sum"

    def __post_init__(self) -> None:
        if self.layers not in LAYER_CHOICES:
            raise SpecError(f"attention: layers={self.layers!r}; choose from {LAYER_CHOICES}")
        if self.agg not in AGGREGATIONS:
            raise SpecError(f"attention: agg={self.agg!r}; choose from {AGGREGATIONS}")

    @property
    def spec(self) -> str:
        return f"attention:query=last,layers={self.layers},agg={self.agg}"

    def score(self, model: PreTrainedModel, trace: Trace) -> list[float]:
        if not trace.steps:
            return []
        rows = last_token_attention(model, trace.all_ids)  # (layers, tokens)
        half = rows.shape[0] // 2
        selected = {"all": rows, "first-half": rows[:half], "last-half": rows[half:]}[self.layers]
        per_token = selected.mean(dim=0).double().numpy()
        reduce = np.sum if self.agg == "sum" else np.mean
        return normalise(np.array([reduce(per_token[s.start : s.end]) for s in trace.steps]))


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

    def score(self, model: PreTrainedModel, trace: Trace) -> list[float]:
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

    def score(self, model: PreTrainedModel, trace: Trace) -> list[float]:
        return normalise(np.array([s.num_tokens for s in trace.steps], dtype=float))


@SCORERS.register("position")
@dataclass(frozen=True)
class PositionScorer:
    """Importance growing linearly with position: recent steps matter most."""

    @property
    def spec(self) -> str:
        return "position"

    def score(self, model: PreTrainedModel, trace: Trace) -> list[float]:
        return normalise(np.arange(1, len(trace.steps) + 1, dtype=float))


@SCORERS.register("uniform")
@dataclass(frozen=True)
class UniformScorer:
    """Every step equally important: no step can be told apart, so nothing is pruned."""

    @property
    def spec(self) -> str:
        return "uniform"

    def score(self, model: PreTrainedModel, trace: Trace) -> list[float]:
        return normalise(np.ones(len(trace.steps)))
