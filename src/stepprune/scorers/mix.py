"""The mix scorer: a weighted sum of two scorers' normalised importances.

Spec: ``mix:a=SPEC_A,b=SPEC_B,w=W`` (default ``w=0.5``); a part spec with options of its own
goes in parentheses, e.g. ``mix:a=(attention:query=probe,agg=mean),b=entropy:agg=mean,w=0.7``
(mixes nest). Importance of step i::

    score_i = W * A_i + (1 - W) * B_i

where ``A`` and ``B`` are the parts' importances, each already normalised to sum 1, so the mix
sums to 1 too. Cost: that of both parts. Online mode works when both parts score cached steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from transformers import PreTrainedModel

from stepprune.kvcache import KVState
from stepprune.models import ChatFormat
from stepprune.registry import Fraction, SpecError
from stepprune.schema import Step, Trace
from stepprune.scorers.base import SCORERS, Scorer, normalise
from stepprune.scorers.parts import Composite, build_part


@SCORERS.register("mix")
@dataclass(frozen=True)
class MixScorer(Composite):
    """``w * a + (1 - w) * b`` of two scorers' normalised importances.

    ``a`` and ``b`` are spec strings (canonicalised on construction); the built scorers are
    kept beside them.
    """

    a: str = ""
    b: str = ""
    w: Fraction = 0.5
    scorer_a: Scorer = field(init=False, repr=False, compare=False)
    scorer_b: Scorer = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.a or not self.b:
            raise SpecError("mix: give both parts, e.g. mix:a=attention,b=entropy,w=0.5")
        for name in ("a", "b"):
            scorer = build_part(getattr(self, name), "mix", name)
            object.__setattr__(self, f"scorer_{name}", scorer)
            object.__setattr__(self, name, scorer.spec)

    @property
    def parts(self) -> tuple[Scorer, ...]:
        return (self.scorer_a, self.scorer_b)

    def combine(self, a: list[float], b: list[float]) -> list[float]:
        """``w * a + (1 - w) * b``, renormalised (it already sums to 1 up to rounding)."""
        return normalise(self.w * np.asarray(a, float) + (1 - self.w) * np.asarray(b, float))

    def score(
        self,
        model: PreTrainedModel,
        trace: Trace,
        fmt: ChatFormat,
        gold: str | None = None,
    ) -> list[float]:
        if not trace.steps:
            return []
        return self.combine(
            self.scorer_a.score(model, trace, fmt, gold),
            self.scorer_b.score(model, trace, fmt, gold),
        )

    def online_problem(self) -> str | None:
        """Why online mode cannot use this mix (None: both parts score cached steps)."""
        for part in self.parts:
            why = part.online_problem()
            if why:
                return f"its part {part.spec!r} cannot score cached steps: {why}"
        return None

    def score_cache(
        self, model: PreTrainedModel, fmt: ChatFormat, state: KVState, steps: list[Step]
    ) -> list[float]:
        """Online checkpoints: the same mix of both parts' cached-step scores."""
        if self.online_problem():
            return super().score_cache(model, fmt, state, steps)
        return self.combine(
            self.scorer_a.score_cache(model, fmt, state, steps),
            self.scorer_b.score_cache(model, fmt, state, steps),
        )
