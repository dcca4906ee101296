"""What a step scorer is, and the registry that builds one from a spec string.

A scorer is a ``Scorer`` dataclass with its options as typed fields (see ``registry``); it
overrides ``score`` and, when it can score the steps still cached during generation (online
mode), ``score_cache``. Everything else has a default here, so the driver never has to ask
whether a scorer has a member.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np
from transformers import PretrainedConfig, PreTrainedModel

from stepprune.models import ChatFormat
from stepprune.registry import Plugin, Registry
from stepprune.schema import Step, Trace

if TYPE_CHECKING:
    from stepprune.kvcache import KVState


class Scorer(Plugin, ABC):
    """Scores the steps of a segmented trace.

    Subclasses are frozen dataclasses registered with ``@SCORERS.register(name)``.
    """

    #: Whether the scorer reads the reference answer (``gold``): an oracle, to be compared
    #: with answer-free scorers only as a reference.
    reads_gold: bool = False

    @property
    def reads_answer_section(self) -> bool:
        """Whether the scorer reads the trace's answer section (after ``</think>``): the
        reference answer on a teacher-forced trace, so an oracle there (``bench scorers``)."""
        return False

    @property
    def oracle_on_teacher_forced(self) -> bool:
        """Whether the scorer reads the reference answer on a teacher-forced trace."""
        return self.reads_gold or self.reads_answer_section

    @abstractmethod
    def score(
        self, model: PreTrainedModel, trace: Trace, fmt: ChatFormat, gold: str | None = None
    ) -> list[float]:
        """One non-negative importance per step, summing to 1 (empty list for no steps).

        Args:
            model: The causal LM that made (or would make) the trace.
            trace: A segmented trace.
            fmt: The model's chat format (tokenizer, cue and probe text).
            gold: The reference answer; only oracle scorers (``reads_gold``) read it.
        """

    @property
    def needs_model_config(self) -> bool:
        """Whether ``check_model`` has something to check (read from the model's files before
        the weights load: worth it only then, a GGUF's metadata takes seconds)."""
        return False

    def check_model(self, config: PretrainedConfig, cached_only: bool = False) -> None:
        """Raise SpecError when the spec does not fit the model (a layer index past its last
        layer). ``cached_only``: online mode, where only full-attention layers are read."""

    def online_problem(self) -> str | None:
        """Why this scorer cannot score cached steps during generation (None: it can)."""
        return "it needs the finished trace"

    def score_cache(
        self, model: PreTrainedModel, fmt: ChatFormat, state: KVState, steps: list[Step]
    ) -> list[float]:
        """Importances of ``steps``, all held in ``state``'s cache (online checkpoints)."""
        raise ValueError(f"scorer {self.spec!r} cannot score cached steps: {self.online_problem()}")

    def gold_of(self, gold: str | None) -> str:
        """The reference answer an oracle scorer needs, or a clear error without one."""
        if gold is None:
            raise ValueError(f"scorer {self.spec!r} needs the reference answer")
        return gold


SCORERS: Registry[Scorer] = Registry("scorer")


def normalise(values: np.ndarray) -> list[float]:
    """Scale non-negative values to sum 1; all-zero input becomes uniform."""
    if len(values) == 0:
        return []
    total = float(values.sum())
    if total <= 0:
        return [1.0 / len(values)] * len(values)
    return (values / total).tolist()
