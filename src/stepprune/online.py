"""Online pruning during generation (Think Clearly): evict low-attention steps from the cache.

At every checkpoint (a finished paragraph, or every ``interval`` tokens) the probe ("Time is
up ..." and the end-of-thinking cue) is appended to the cache, the finished steps are scored by
the attention the probe pays them, the probe's entries are dropped again, and the steps the
policy rejects are evicted from the full-attention layers. The prompt and the most recent
``recent`` tokens are never evicted. Positions stay the original ones (gaps where steps left).

Sampling reproduces ``model.generate`` (temperature, then top-p, then a multinomial draw with the
global torch generator), so the same seed without eviction gives the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import LogitsProcessorList, PreTrainedModel
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from stepprune.attention import capture_attention
from stepprune.generation import SamplingConfig
from stepprune.kvcache import FULL, KVState, prefill
from stepprune.models import ChatFormat
from stepprune.pruning import PruningPolicy
from stepprune.reeval import cue_after
from stepprune.reeval_kv import decode_greedy
from stepprune.schema import Step
from stepprune.scorers.attention import DEFAULT_PROBE
from stepprune.steps import (
    DEFAULT_MIN_STEP_CHARS,
    BlockBreakWatcher,
    block_breaks,
    segment_paragraphs,
)


@dataclass(frozen=True)
class OnlineConfig:
    """How and when to evict.

    ``threshold`` goes to ``policy`` (percentile / adaptive); with ``budget`` set, steps are
    instead evicted lowest-score first until the cache holds at most ``budget`` entries.
    ``interval`` 0 checks at every paragraph end, M > 0 every M tokens.
    """

    policy: PruningPolicy
    threshold: float = 0.0
    budget: int | None = None
    interval: int = 0
    recent: int = 32
    probe: str = DEFAULT_PROBE
    min_step_chars: int = DEFAULT_MIN_STEP_CHARS

    def __post_init__(self) -> None:
        if self.interval < 0 or self.recent < 0:
            raise ValueError("--interval and the recent window must be >= 0")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"--budget must be >= 1, got {self.budget}")


@dataclass
class OnlineResult:
    """What happened during one online generation."""

    output_ids: list[int]
    reasoning_end: int  # absolute index of the end of reasoning in prompt + output
    cache_tokens: int  # full-attention entries when the answer began
    peak_cache_tokens: int
    final_cache_tokens: int
    evictions: list[dict] = field(default_factory=list)
    checkpoints: int = 0
    answer_ids: list[int] = field(default_factory=list)  # teacher-forced runs: after the cue
    answer_truncated: bool = False
    cue_tokens: int = 0  # teacher-forced runs: the end-of-reasoning cue appended to the cache

    @property
    def evicted_positions(self) -> set[int]:
        return {p for e in self.evictions for s in e["steps"] for p in range(s["start"], s["end"])}


class Sampler:
    """Next-token choice exactly as ``model.generate`` samples (or greedy at temperature 0)."""

    def __init__(self, sampling: SamplingConfig) -> None:
        self.greedy = sampling.temperature == 0
        self.warpers = LogitsProcessorList(
            [TemperatureLogitsWarper(sampling.temperature), TopPLogitsWarper(sampling.top_p)]
            if not self.greedy
            else []
        )

    def __call__(self, ids: list[int], logits: torch.Tensor) -> int:
        if self.greedy:
            return int(torch.argmax(logits))
        scores = self.warpers(torch.tensor([ids]), logits[None].float())
        return int(torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)[0, 0])


def _probe_scores(
    model: PreTrainedModel, state: KVState, probe: list[int], steps: list[Step]
) -> list[float]:
    """Probe-to-step attention (mean over full-attention layers, heads and probe tokens, summed
    over each step's entries), then the probe is removed from the cache."""
    positions = state.positions[FULL]
    buckets = torch.full((len(positions) + len(probe),), len(steps), dtype=torch.long)
    for i, step in enumerate(steps):
        buckets[: len(positions)][(positions >= step.start) & (positions < step.end)] = i
    saved, saved_positions, saved_next = (
        state.snapshot(),
        dict(state.positions),
        state.next_position,
    )
    full_layers = [i for i, kind in enumerate(state.types) if kind == FULL]
    query_positions = list(range(len(positions), len(positions) + len(probe)))
    with capture_attention(
        model,
        [q - len(positions) for q in query_positions],
        key_buckets=buckets.to(model.device),
        num_buckets=len(steps) + 1,
        layers=full_layers,
    ) as capture:
        state.forward(model, probe)
    state.restore(saved, saved_positions, saved_next)
    mass = capture.stacked().double().mean(dim=(0, 1, 2))[: len(steps)].cpu().numpy()
    total = mass.sum()
    return (mass / total).tolist() if total > 0 else [1.0 / len(steps)] * len(steps)


class OnlinePruner:
    """Runs one generation with checkpoints; see the module docstring."""

    def __init__(
        self, model: PreTrainedModel, fmt: ChatFormat, config: OnlineConfig, eos_ids: Sequence[int]
    ) -> None:
        self.model, self.fmt, self.config = model, fmt, config
        self.eos_ids = list(eos_ids)
        self.probe = fmt.encode(f"\n\n{config.probe}\n") + fmt.answer_cue_ids()

    def _checkpoint(
        self, state: KVState, all_ids: list[int], reasoning_start: int, result: OnlineResult
    ) -> KVState:
        """Score the finished, still-cached steps and evict what the policy rejects."""
        result.checkpoints += 1
        horizon = len(all_ids) - self.config.recent
        gone = result.evicted_positions
        steps = [
            s
            for s in segment_paragraphs(
                self.fmt.tokenizer,
                all_ids,
                reasoning_start,
                len(all_ids),
                self.config.min_step_chars,
            )
            if s.end <= horizon and not any(p in gone for p in range(s.start, s.end))
        ]
        if len(steps) < 2:
            return state
        scores = _probe_scores(self.model, state, self.probe, steps)
        evict = self._choose(scores, steps, state.length)
        if not evict:
            return state
        positions = state.positions[FULL]
        keep = torch.ones(len(positions), dtype=torch.bool)
        for step in evict:
            keep &= ~((positions >= step.start) & (positions < step.end))
        result.evictions.append(
            {
                "at_token": len(all_ids),
                "steps": [{"start": s.start, "end": s.end, "text": s.text} for s in evict],
            }
        )
        return state.gather(keep, "original", self.model)

    def _choose(self, scores: list[float], steps: list[Step], cache_len: int) -> list[Step]:
        if self.config.budget is None:
            keep = self.config.policy.keep(scores, self.config.threshold)
            return [s for s, k in zip(steps, keep, strict=True) if not k]
        chosen, size = [], cache_len
        for i in np.argsort(scores, kind="stable"):
            if size <= self.config.budget:
                break
            chosen.append(steps[int(i)])
            size -= steps[int(i)].num_tokens
        return sorted(chosen, key=lambda s: s.start)

    @torch.inference_mode()
    def run(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        seed: int,
        forced_reasoning: list[int] | None = None,
        answer_max_tokens: int = 512,
    ) -> OnlineResult:
        """Generate (or teacher-force ``forced_reasoning``, then answer greedily) with eviction.

        ``forced_reasoning``: the output tokens up to the end of reasoning (``</think>``
        excluded); checkpoints then fall at its paragraph ends or every ``interval`` tokens.
        """
        torch.manual_seed(seed)
        state, logits = prefill(self.model, prompt_ids)
        result = OnlineResult([], 0, 0, state.length, 0)
        all_ids = list(prompt_ids)
        reasoning_start = len(prompt_ids)
        if forced_reasoning is not None:
            state = self._force(state, all_ids, forced_reasoning, reasoning_start, result)
            result.reasoning_end = len(all_ids)
            result.cache_tokens = state.length
            # The same cue as text and kv modes, after what is still cached of the reasoning.
            gone = result.evicted_positions
            cached = [all_ids[p] for p in range(reasoning_start, len(all_ids)) if p not in gone]
            cue = cue_after(self.fmt, cached)
            answer = decode_greedy(
                self.model, state, cue, answer_max_tokens, self.eos_ids, self.fmt
            )
            result.answer_ids, result.answer_truncated = answer.ids, answer.truncated
            result.cue_tokens = len(cue)
            result.output_ids = all_ids[len(prompt_ids) :] + cue + answer.ids
        else:
            state = self._generate(state, logits, all_ids, sampling, reasoning_start, result)
            result.output_ids = all_ids[len(prompt_ids) :]
        result.final_cache_tokens = state.length
        result.peak_cache_tokens = max(result.peak_cache_tokens, state.length)
        return result

    def _force(
        self,
        state: KVState,
        all_ids: list[int],
        forced: list[int],
        reasoning_start: int,
        result: OnlineResult,
    ) -> KVState:
        texts = self.fmt.tokenizer.batch_decode([[t] for t in forced])
        breaks = block_breaks(texts)
        start = 0
        for i in range(len(forced)):
            at_interval = self.config.interval and (i + 1 - start) >= self.config.interval
            if i + 1 == len(forced) or at_interval or (not self.config.interval and breaks[i]):
                state.forward(self.model, forced[start : i + 1])
                all_ids.extend(forced[start : i + 1])
                start = i + 1
                result.peak_cache_tokens = max(result.peak_cache_tokens, state.length)
                state = self._checkpoint(state, all_ids, reasoning_start, result)
        return state

    def _generate(
        self,
        state: KVState,
        logits: torch.Tensor,
        all_ids: list[int],
        sampling: SamplingConfig,
        reasoning_start: int,
        result: OnlineResult,
    ) -> KVState:
        sample = Sampler(sampling)
        in_reasoning, since_check = True, 0
        block_ends = BlockBreakWatcher()
        for _ in range(sampling.max_new_tokens):
            token = sample(all_ids, logits)
            all_ids.append(token)
            if token in self.eos_ids:
                break
            logits = state.forward(self.model, [token])[-1]
            result.peak_cache_tokens = max(result.peak_cache_tokens, state.length)
            if not in_reasoning:
                continue
            if token == self.fmt.think_close_id:
                in_reasoning = False
                result.reasoning_end = len(all_ids) - 1
                result.cache_tokens = state.length
                continue
            since_check += 1
            if self.config.interval:
                due = since_check >= self.config.interval
            else:
                due = block_ends.feed(self.fmt.tokenizer.decode([token]))
            if due:
                since_check = 0
                state = self._checkpoint(state, all_ids, reasoning_start, result)
        result.answer_truncated = all_ids[-1] not in self.eos_ids
        if in_reasoning:
            result.reasoning_end = len(all_ids) - (1 if all_ids[-1] in self.eos_ids else 0)
            result.cache_tokens = state.length
        return state
