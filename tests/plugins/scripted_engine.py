"""An engine written outside the package, in one file: it "decodes" beside the driver by
writing the same canned reasoning for every prompt and the same answer for every context.

Registered by importing this module (``STEPPRUNE_PLUGINS=tests.plugins.scripted_engine``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stepprune.decoding import EOS, Continuation, SamplingConfig
from stepprune.engines import ENGINES, Engine, EngineConfig, ModelView

REASONING = "First, 3 + 4 = 7.\n\nThen 7 - 4 = 3 checks it.\n\nSo the sum is seven.\n</think>\n\n"
ANSWER = "The answer is \\boxed{7}."


class ScriptedEngine(Engine):
    """Canned continuations; counts its calls so a test can see it was used."""

    name = "scripted"

    def __init__(self, view: ModelView) -> None:
        self.encode = lambda text: view.tokenizer.encode(text, add_special_tokens=False)
        self.eos = view.eos_ids[0]
        self.calls = {"sample": 0, "greedy": 0}

    def sample(
        self, prompts: Sequence[list[int]], seeds: Sequence[int], sampling: SamplingConfig
    ) -> list[Continuation]:
        self.calls["sample"] += 1
        ids = self.encode(REASONING + ANSWER) + [self.eos]
        return [Continuation(list(ids), EOS) for _ in prompts]

    def greedy(
        self, contexts: Sequence[list[int]], max_new_tokens: int, box_prefix: str | None
    ) -> list[Continuation]:
        self.calls["greedy"] += 1
        return [Continuation(self.encode(ANSWER) + [self.eos], EOS) for _ in contexts]

    def describe(self) -> str:
        return "scripted engine"


@ENGINES.register("scripted")
@dataclass(frozen=True)
class ScriptedEngineConfig(EngineConfig):
    """Decodes beside the driver, as vLLM does, but without a model."""

    location = "driver"

    def open(self, view: ModelView, seed: int) -> ScriptedEngine:
        return ScriptedEngine(view)
