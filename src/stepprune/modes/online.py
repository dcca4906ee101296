"""Online pruning during generation (Think Clearly): evict low-attention steps from the cache.

At every checkpoint (a finished paragraph, or every ``interval`` tokens) the session's scorer
scores the finished steps still in the cache (``Scorer.score_cache``: for
``attention:query=probe`` the probe "Time is up ..." and the end-of-thinking cue are appended,
scored, and dropped again), and the steps the policy rejects at the threshold (or beyond a
``budget`` of cache entries) are evicted from the full-attention layers. The prompt and the most
recent ``recent`` tokens are never evicted. Positions stay the original ones (gaps where steps
left).

Sampling uses the engines' per-sequence sampler (``decoding.RowSampler``) with the trace's seed,
so without eviction online generation writes the trace the ``hf`` engine samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch

from stepprune.context import cue_after
from stepprune.decoding import EOS, LENGTH, Continuation, RowSampler, SamplingConfig, StopRule
from stepprune.kvcache import FULL, KVState, decode_greedy, prefill
from stepprune.modes.base import MODES, Mode, Outcome, Pruning
from stepprune.policies import PruningPolicy
from stepprune.registry import NonNegativeInt, PositiveInt, run_setting
from stepprune.schema import Problem, Step, Trace
from stepprune.session import sample_seed
from stepprune.steps import BlockBreakWatcher, IncrementalSegmenter, block_breaks

if TYPE_CHECKING:
    from stepprune.scorers import Scorer
    from stepprune.session import Session


#: Default budget of one batch of online rows (keys and values of every row, padding
#: included; an upper bound: a row's cache grows as it generates, and shrinks as it evicts).
#: A row lives for a whole generation, so online batches need more than kv mode's: 32 GiB
#: hold a chunk of 8 traces x 6 thresholds of 12k tokens of the bundled model in float32
#: (R1-Distill-Qwen-1.5B in bfloat16 fills 16 GiB with them). A run caps it at half of the
#: memory free on the model's device (``kvunits.budget_entries``).
ONLINE_BATCH_MIB = 32768


def check_eviction(interval: int, budget: int | None, recent: int) -> None:
    """The check of eviction settings given in Python (a spec's are checked by their types)."""
    if interval < 0:
        raise ValueError(f"--interval must be >= 0, got {interval}")
    if recent < 0:
        raise ValueError(f"the recent window must be >= 0, got {recent}")
    if budget is not None and budget < 1:
        raise ValueError(f"--budget must be >= 1, got {budget}")


@dataclass(frozen=True)
class OnlineConfig:
    """How and when to evict.

    ``threshold`` goes to ``policy`` (percentile / adaptive) at every checkpoint, over the
    finished steps still in the cache, so pruning compounds over a trace: a step that survives
    one checkpoint is scored again at the next. With ``budget`` set, steps are instead evicted
    lowest-score first until the cache holds at most ``budget`` entries (the threshold is then
    unused). ``interval`` 0 checks at every paragraph end, M > 0 every M tokens.

    ``scope="reasoning"`` gives the threshold a meaning that does not compound: it is the
    fraction of the finished reasoning's tokens evicted in all. At each checkpoint the
    lowest-scoring cached steps are evicted, lowest first, while the tokens evicted so far stay
    within ``threshold`` x the tokens of every finished step (evicted or cached), so the trace
    keeps about ``1 - threshold`` of its reasoning however many checkpoints it passes (the
    policy is then unused).
    """

    policy: PruningPolicy
    threshold: float = 0.0
    budget: int | None = None
    interval: int = 0
    recent: int = 32
    scope: str = "cached"

    def __post_init__(self) -> None:
        check_eviction(self.interval, self.budget, self.recent)
        if self.scope not in ("cached", "reasoning"):
            raise ValueError(f"scope must be cached or reasoning, got {self.scope!r}")


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
    answer: Continuation | None = None  # teacher-forced runs: the answer after the cue
    answer_truncated: bool = False  # generated runs: no end-of-sequence token
    cue_tokens: int = 0  # teacher-forced runs: the end-of-reasoning cue appended to the cache

    @property
    def evicted_positions(self) -> set[int]:
        return {p for e in self.evictions for s in e["steps"] for p in range(s["start"], s["end"])}


class OnlinePruner:
    """Runs one generation with checkpoints; see the module docstring."""

    def __init__(self, session: Session, config: OnlineConfig) -> None:
        self.session, self.config = session, config
        self.model, self.fmt = session.model, session.format
        self.eos_ids = list(session.eos_ids)

    def _checkpoint(
        self, state: KVState, all_ids: list[int], reasoning_start: int, result: OnlineResult
    ) -> KVState:
        """Score the finished, still-cached steps and evict what the policy rejects."""
        steps = self.candidates(all_ids, reasoning_start, result)
        if len(steps) < 2:
            return state
        scores = self.session.scorer.score_cache(self.model, self.fmt, state, steps)
        evict = self.decide(scores, steps, state.length, len(all_ids), result)
        if not evict:
            return state
        positions = state.positions[FULL]
        keep = torch.ones(len(positions), dtype=torch.bool)
        for step in evict:
            keep &= ~((positions >= step.start) & (positions < step.end))
        return state.gather(keep)

    def candidates(
        self, all_ids: list[int], reasoning_start: int, result: OnlineResult
    ) -> list[Step]:
        """A checkpoint's first half (counted in ``result``): the finished steps still in the
        cache, outside the ``recent`` window. Fewer than two: nothing is scored."""
        result.checkpoints += 1
        horizon = len(all_ids) - self.config.recent
        gone = result.evicted_positions
        return [
            s
            for s in self.segment(all_ids, reasoning_start, len(all_ids))
            if s.end <= horizon and not any(p in gone for p in range(s.start, s.end))
        ]

    def decide(
        self,
        scores: list[float],
        steps: list[Step],
        cache_len: int,
        at_token: int,
        result: OnlineResult,
    ) -> list[Step]:
        """A checkpoint's second half: the steps to evict, recorded in ``result``."""
        evict = self._choose(scores, steps, cache_len, result)
        if evict:
            result.evictions.append(
                {
                    "at_token": at_token,
                    "steps": [{"start": s.start, "end": s.end, "text": s.text} for s in evict],
                }
            )
        return evict

    def _choose(
        self, scores: list[float], steps: list[Step], cache_len: int, result: OnlineResult
    ) -> list[Step]:
        if self.config.budget is None and self.config.scope == "reasoning":
            gone = sum(s["end"] - s["start"] for e in result.evictions for s in e["steps"])
            allowed = self.config.threshold * (gone + sum(s.num_tokens for s in steps))
            chosen = []
            for i in np.argsort(scores, kind="stable"):
                if gone + steps[int(i)].num_tokens > allowed:
                    break
                chosen.append(steps[int(i)])
                gone += steps[int(i)].num_tokens
            return sorted(chosen, key=lambda s: s.start)
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
        # Checkpoints segment a sequence that only grows: each token is decoded once.
        self.segment = IncrementalSegmenter(self.session.segmenter, self.fmt.tokenizer)
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
            rule = StopRule(self.fmt.tokenizer, self.eos_ids, self.fmt.answer_cue_text())
            answer = decode_greedy(self.model, state, cue, answer_max_tokens, rule)
            result.answer = answer
            result.cue_tokens = len(cue)
            result.output_ids = all_ids[len(prompt_ids) :] + cue + answer.ids
        else:
            sampler = RowSampler(seed, sampling)
            state = self._generate(
                state, logits, all_ids, sampler, sampling, reasoning_start, result
            )
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
        sample: RowSampler,
        sampling: SamplingConfig,
        reasoning_start: int,
        result: OnlineResult,
    ) -> KVState:
        in_reasoning, since_check = True, 0
        block_ends = BlockBreakWatcher()
        for _ in range(sampling.max_new_tokens):
            token = sample(logits)
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


@MODES.register("online")
@dataclass
class OnlineMode(Mode):
    """Think Clearly: evict low-scoring steps from the cache while the trace is generated.

    A pruning's threshold goes to the session's policy at every checkpoint, so pruning
    compounds over a trace; records report the fraction actually kept. ``scope=reasoning``
    instead makes the threshold the fraction of the finished reasoning's tokens evicted in all
    (``OnlineConfig``), which does not compound. With ``budget`` the threshold is unused and one
    generation serves every pruning.
    """

    interval: NonNegativeInt = 0
    budget: PositiveInt | None = None
    scope: Literal["cached", "reasoning"] = "cached"
    sampling: SamplingConfig = run_setting(default_factory=SamplingConfig)
    seed: int = run_setting(0)
    answer_max_tokens: int = run_setting(512)
    recent: int = run_setting(32)
    batch_mib: int = run_setting(ONLINE_BATCH_MIB)
    decides_online = True
    batches_units = True
    #: Run the generations of several traces as rows of batches (``online_batch``); False:
    #: one generation after another (the reference the batched rows are tested against).
    batched: ClassVar[bool] = True

    def check(self, scorer: Scorer) -> None:
        problem = scorer.online_problem()
        if problem:
            raise ValueError(
                f"--mode online scores the cached steps at each checkpoint; scorer "
                f"{scorer.spec!r} cannot ({problem}): use attention:query=probe, "
                "length, position, random or uniform"
            )

    def evaluate(self, session, problem: Problem, trace: Trace, prunings: Sequence[Pruning]):
        return self.evaluate_units(session, [(problem, trace, prunings)])[0]

    def evaluate_units(
        self, session, units: Sequence[tuple[Problem, Trace, Sequence[Pruning]]]
    ) -> list[list[Outcome]]:
        """Every unit's generations (one per threshold, one for all with ``budget``): rows of
        batches within ``batch_mib`` when the scorer allows it, else one after another."""
        from stepprune.modes.online_batch import OnlineTask, batchable, run_units

        plans = []
        for problem, trace, prunings in units:
            configs: dict[float | None, OnlineConfig] = {}
            for p in prunings:
                key = None if self.budget is not None else p.threshold
                if key not in configs:
                    configs[key] = OnlineConfig(
                        session.policy,
                        p.threshold,
                        self.budget,
                        self.interval,
                        self.recent,
                        self.scope,
                    )
            prompt = trace.prompt_ids
            forced = trace.all_ids[len(prompt) : trace.reasoning_end]
            seed = sample_seed(self.seed, problem.id, trace.sample)
            tasks = [
                OnlineTask(prompt, c, seed, forced if trace.teacher_forced else None)
                for c in configs.values()
            ]
            plans.append((list(configs), tasks))
        if self.batched and batchable(session.scorer):
            results = run_units(
                session,
                [tasks for _, tasks in plans],
                self.sampling,
                self.answer_max_tokens,
                self.batch_mib,
            )
        else:
            results = [
                [
                    OnlinePruner(session, t.config).run(
                        t.prompt_ids,
                        self.sampling,
                        t.seed,
                        t.forced_reasoning,
                        self.answer_max_tokens,
                    )
                    for t in tasks
                ]
                for _, tasks in plans
            ]
        return [
            self._outcomes(session, problem, trace, prunings, keys, unit_results)
            for (problem, trace, prunings), (keys, _), unit_results in zip(
                units, plans, results, strict=True
            )
        ]

    def _outcomes(self, session, problem, trace, prunings, keys, results) -> list[Outcome]:
        """One outcome per pruning from the generations of its key (threshold, or None)."""
        runs = {
            key: self._unpack(session, problem, trace, result)
            for key, result in zip(keys, results, strict=True)
        }
        outcomes = []
        for p in prunings:
            steps, keep, answer, context_tokens, details = runs[
                None if self.budget is not None else p.threshold
            ]
            outcome = Outcome(p, steps, keep, answer, context_tokens, details)
            outcome.after_cue = trace.teacher_forced  # a generated answer follows no cue
            outcomes.append(outcome)
        return outcomes

    def _unpack(self, session, problem: Problem, trace: Trace, result: OnlineResult):
        """Steps, keep flags, answer, context size and record details of one generation."""
        if trace.teacher_forced:
            steps, answer = trace.steps, result.answer
        else:
            online = session.finish_trace(
                problem, trace.sample, trace.prompt_ids, result.output_ids, score=False
            )
            steps = online.steps
            # The answer section: after </think> (thinking models), or from the paragraph that
            # writes \boxed (others, where reasoning_end is that paragraph's first token).
            answer_from = online.reasoning_end + (1 if session.format.is_thinking else 0)
            ids = online.all_ids[answer_from:] if online.finished_reasoning else []
            answer = Continuation(ids, EOS if online.hit_eos else LENGTH)
        gone = result.evicted_positions
        keep = [not any(p in gone for p in range(s.start, s.end)) for s in steps]
        details = {
            "positions": "original",
            "cache_tokens": result.cache_tokens,
            "full_cache_tokens": result.reasoning_end,
            "online": {
                "tokens_generated": len(result.output_ids),
                "peak_cache_tokens": result.peak_cache_tokens,
                "final_cache_tokens": result.final_cache_tokens,
                "checkpoints": result.checkpoints,
                "evictions": result.evictions,
                # The steps of this generation (they differ from the unit's trace once
                # something was evicted); kept_steps index this list.
                "steps": [[s.start, s.end] for s in steps],
            },
        }
        return steps, keep, answer, result.cache_tokens + result.cue_tokens, details
