"""What a step scorer is, and the registry that builds one from a spec string."""

from __future__ import annotations

from typing import Protocol

import numpy as np
from transformers import PreTrainedModel

from stepprune.models import ChatFormat
from stepprune.registry import Registry
from stepprune.schema import Trace


class Scorer(Protocol):
    """Scores the steps of a segmented trace.

    ``fmt`` (tokenizer and chat format) and ``gold`` (the reference answer) are needed by some
    scorers only (probe queries, ablation); the others ignore them.
    """

    @property
    def spec(self) -> str:
        """The canonical spec string that rebuilds this scorer."""
        ...

    def score(
        self,
        model: PreTrainedModel,
        trace: Trace,
        fmt: ChatFormat | None = None,
        gold: str | None = None,
    ) -> list[float]:
        """One non-negative importance per step, summing to 1 (empty list for no steps)."""
        ...


# Optional members of a scorer, looked up with getattr:
# - ``check_model(config, cached_only=False)``: raise SpecError when the spec does not fit the
#   model (e.g. a layer index past its last layer); called with the loaded model's config
#   before any trace is made, and, when ``needs_model_config`` is true, with the config read
#   from the model's files before the run folder is opened or the weights are loaded.
# - ``online_problem()`` / ``score_cache(...)``: online mode (see ``modes.online``).


SCORERS: Registry[Scorer] = Registry("scorer")


def normalise(values: np.ndarray) -> list[float]:
    """Scale non-negative values to sum 1; all-zero input becomes uniform."""
    if len(values) == 0:
        return []
    total = float(values.sum())
    if total <= 0:
        return [1.0 / len(values)] * len(values)
    return (values / total).tolist()


def require(value, what: str, scorer: str):
    """The scorer's extra input, or a clear error saying which one is missing."""
    if value is None:
        raise ValueError(f"scorer {scorer!r} needs {what}")
    return value
