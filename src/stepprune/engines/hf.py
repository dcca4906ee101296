"""The transformers engine: traces by continuous batching, answers by ``model.generate``.

Sampling draws every sequence from its own ``torch.Generator`` (``RowSampler``), so a trace
depends on its seed and its prompt only, not on which other sequences share its batch, how many
samples a problem has, or where a resumed run restarts. Traces are decoded ``batch_size`` at a
time with a finished row's slot refilled by the next prompt at once (``engines.slots``), instead
of static batches that each wait for their longest row. Greedy answers use ``generate`` on
left-padded batches; ``SeededSampling`` is the same seeded draw as a logits processor, for
``generate``, where only the chosen token stays finite and ``generate``'s own sampling (one
global generator for the whole batch, and the model's default ``top_k``) is never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from stepprune.decoding import Continuation, RowSampler, SamplingConfig, StopRule, sampling_probs
from stepprune.engines.base import ENGINES, Engine, EngineConfig, ModelView
from stepprune.engines.slots import sample_slots
from stepprune.registry import PositiveInt

DEFAULT_BATCH_SIZE = 8


class SeededSampling(LogitsProcessor):
    """Samples row ``i`` with ``samplers[i]`` and returns scores where only that token is finite."""

    def __init__(self, samplers: Sequence[RowSampler], sampling: SamplingConfig) -> None:
        self.samplers, self.sampling = list(samplers), sampling

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        """``scores``: ``(rows, vocab)``; every row filtered at once, drawn by its own sampler."""
        probs = sampling_probs(scores, self.sampling.temperature, self.sampling.top_p)
        tokens = torch.cat([s.draw(probs[row]) for row, s in enumerate(self.samplers)])
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens[:, None], 0.0)


class _StopRows(StoppingCriteria):
    """Ends each row once ``rule`` says its generation is finished."""

    def __init__(self, rule: StopRule, width: int) -> None:
        self.rule, self.width = rule, width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs):
        rows = input_ids[:, self.width :].tolist()
        done = [self.rule.stop(row) is not None for row in rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFEngine(Engine):
    """Batched decoding with transformers ``generate``.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer (decodes answers to find a complete box).
        eos_ids: Token ids that end a sequence.
        pad_id: Padding id of left-padded batches.
        batch_size: Sequences per ``generate`` call.
    """

    name = "hf"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        eos_ids: Sequence[int],
        pad_id: int,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids, self.pad_id, self.batch_size = list(eos_ids), pad_id, batch_size

    def _generate(
        self,
        batch: Sequence[list[int]],
        max_new_tokens: int,
        processors: list[LogitsProcessor],
        stopping: list[StoppingCriteria],
    ) -> list[list[int]]:
        """Left-pad ``batch`` and decode greedily (after ``processors``); generated ids per row."""
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        # A fresh config: the model's own generation_config (R1 ships do_sample, top_k, ...)
        # must not leak into a run whose settings are all explicit.
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
        )
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=mask.to(self.model.device),
                generation_config=config,
                logits_processor=LogitsProcessorList(processors),
                stopping_criteria=StoppingCriteriaList(stopping),
            )
        return [row[width:] for row in output.tolist()]

    def _batches(self, items: Sequence) -> list[range]:
        return [
            range(b, min(b + self.batch_size, len(items)))
            for b in range(0, len(items), self.batch_size)
        ]

    def sample(
        self, prompts: Sequence[list[int]], seeds: Sequence[int], sampling: SamplingConfig
    ) -> list[Continuation]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        rule = StopRule(self.tokenizer, self.eos_ids, box_prefix=None)
        generated = sample_slots(
            self.model, prompts, seeds, sampling, self.eos_ids, self.batch_size
        )
        return [rule.finish(ids) for ids in generated]

    def greedy(
        self, contexts: Sequence[list[int]], max_new_tokens: int, box_prefix: str | None
    ) -> list[Continuation]:
        rule = StopRule(self.tokenizer, self.eos_ids, box_prefix)
        results: list[Continuation] = []
        for rows in self._batches(contexts):
            batch = [contexts[i] for i in rows]
            width = max(len(ids) for ids in batch)
            generated = self._generate(batch, max_new_tokens, [], [_StopRows(rule, width)])
            results += [rule.finish(ids) for ids in generated]
        return results


@ENGINES.register("hf")
@dataclass(frozen=True)
class HFEngineConfig(EngineConfig):
    """transformers on the model each worker holds; ``batch`` sequences decoded together."""

    batch: PositiveInt = DEFAULT_BATCH_SIZE
    location = "worker"

    def open(self, view: ModelView, seed: int) -> HFEngine:
        if view.model is None:
            raise ValueError("the hf engine decodes where the model is loaded (no model here)")
        return HFEngine(view.model, view.tokenizer, view.eos_ids, view.pad_id, self.batch)
