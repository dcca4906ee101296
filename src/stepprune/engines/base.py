"""What an engine is: something that continues token-id sequences.

Two kinds of decoding are all the pipeline needs from an engine:

- ``sample``: reasoning traces, sampled with temperature and top-p (no top-k), each sequence
  seeded on its own, so the same seed gives the same trace whichever batch it lands in;
- ``greedy``: answers, decoded greedily until an end-of-sequence token, a complete
  ``\\boxed{}``, or the budget.

Both take and return token ids, never text, so traces keep the exact ids the model saw.
Everything that needs attention rows or cache surgery (scoring, kv and online modes) works on
the transformers model directly, not through an engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

from stepprune.decoding import Continuation, SamplingConfig
from stepprune.registry import Registry


class Engine(ABC):
    """Continues token-id sequences; one instance holds one loaded model."""

    name: str
    #: True when the engine's throughput comes from batching across units (vLLM): the run
    #: sends all pending traces, and the answers of many units, in one call.
    batches_across_units: bool = False

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

    def close(self) -> None:  # noqa: B027 - most engines hold nothing beyond the model
        """Release what the engine holds beyond the model (a process, memory)."""


ENGINES: Registry[Engine] = Registry("engine")
