"""What an engine is: something that continues token-id sequences.

Two kinds of decoding are all the pipeline needs from an engine:

- ``sample``: reasoning traces, sampled with temperature and top-p (no top-k), each sequence
  seeded on its own, so the same seed gives the same trace whichever batch it lands in;
- ``greedy``: answers, decoded greedily until an end-of-sequence token, a complete
  ``\\boxed{}``, or the budget.

Both take and return token ids, never text, so traces keep the exact ids the model saw.
Everything that needs attention rows or cache surgery (scoring, kv and online modes) works on
the transformers model directly, not through an engine.

An engine is chosen by a spec (``hf``, ``vllm:tp=2,gpu_memory=0.6``): the registered plug-in
is an ``EngineConfig`` holding the options, which says where the engine decodes
(``location``) and opens it from a ``ModelView``:

- ``worker``: in the process that holds the transformers model (each Ray worker, or this
  process), on that very model; traces are made one chunk of units per worker call;
- ``driver``: beside the run's driver, in one batch across every pending unit; the workers
  only prepare (prompts, answer contexts) and finish (segment, score, grade).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from stepprune.decoding import Continuation, SamplingConfig
from stepprune.registry import Plugin, Registry


class Engine(ABC):
    """Continues token-id sequences; one instance holds one loaded model."""

    name: str

    @abstractmethod
    def sample(
        self, prompts: Sequence[list[int]], seeds: Sequence[int], sampling: SamplingConfig
    ) -> list[Continuation]:
        """One sampled continuation per prompt, row ``i`` drawn from ``seeds[i]`` alone."""

    @abstractmethod
    def greedy(
        self, contexts: Sequence[list[int]], max_new_tokens: int, box_prefix: str | None
    ) -> list[Continuation]:
        """Greedy continuations; with ``box_prefix`` (the cue text the answer continues) each
        stops at its first complete ``\\boxed{}``."""

    def sample_stream(
        self, prompts: Sequence[list[int]], seeds: Sequence[int], sampling: SamplingConfig
    ) -> Iterator[tuple[int, Continuation]]:
        """``(index, continuation)`` pairs as continuations finish (any order); engines that
        finish sequences at different times override this to hand each over at once."""
        yield from enumerate(self.sample(prompts, seeds, sampling))

    def describe(self) -> str:
        """The engine's name and version, for the run's log."""
        return f"engine {self.name}"

    def close(self) -> None:  # noqa: B027 - most engines hold nothing beyond the model
        """Release what the engine holds beyond the model (a process, memory)."""


@dataclass
class ModelView:
    """What an engine needs of the loaded model, made where the model is loaded.

    ``model`` is the transformers model itself in that process (None once the view has been
    sent to the driver); ``model_dir`` a folder that a driver-side engine reads the weights
    from; ``max_model_len`` the longest sequence the run decodes (prompt, trace, cue, answer).
    """

    tokenizer: Any
    eos_ids: list[int]
    pad_id: int
    dtype: str
    answer_cue: str
    model: Any = None
    model_dir: str | None = None
    max_model_len: int | None = None


class EngineConfig(Plugin, ABC):
    """An engine's options (a registered plug-in, typed fields) and how to open it."""

    #: Where the engine decodes (see the module docstring).
    location: ClassVar[Literal["worker", "driver"]] = "worker"

    def check(self) -> None:
        """Raise ValueError when the engine cannot start here (before anything is loaded)."""

    @abstractmethod
    def open(self, view: ModelView, seed: int) -> Engine:
        """The engine, decoding for the model ``view`` describes; ``seed`` is the run's."""


ENGINES: Registry[EngineConfig] = Registry("engine")
