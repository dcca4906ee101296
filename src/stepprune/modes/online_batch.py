"""Batched online mode: several online generations (the thresholds of a trace, and traces) as
rows of one batch, each with its own checkpoints, evictions and sampler.

``OnlinePruner.run`` generates one sequence at a time, so a trace's six thresholds cost six
full generations of sequential forwards. ``run_rows`` runs them together: one forward per
decode step for every row (``online_rows.OnlineRows``), each row sampling from its own
``RowSampler`` (seeded per sequence, so a row draws the same tokens in any batch), segmenting
its own ids incrementally and deciding its own evictions with the same ``OnlinePruner``
methods. What each row does, token by token, is what ``OnlinePruner.run`` does:

- generated rows: sample, stop at an end-of-sequence id, forward the token, and at a due
  checkpoint score the cached steps and evict. A probe scorer's probe is appended to the row's
  input of the next batched forward (other rows decode in it), so checkpoints cost no forward
  of their own; ``steps_only`` scorers score without a forward;
- teacher-forced rows (one trace's forced reasoning, shared by all rows of a batch): every
  chunk up to a checkpoint is one forward of all rows, the rows that score probe in one more
  forward, and the answers (after each row's own cue) are decoded greedily as rows.

Only scorers that score the cache from a probe (``attention:query=probe``) or from the steps
alone (random, length, position, uniform) batch; ``batchable`` says which. Results are
``OnlineResult`` objects equal to ``OnlinePruner.run``'s (in float32: padding changes only
the order of float sums, see ``tests/test_online_batch.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from stepprune.capture import recording
from stepprune.context import cue_after
from stepprune.decoding import LENGTH, Continuation, RowSampler, SamplingConfig, StopRule
from stepprune.kvcache import FULL, decode_batch_rows, prefill
from stepprune.modes.online import OnlineConfig, OnlinePruner, OnlineResult
from stepprune.modes.online_rows import OnlineRows, RowsCapture
from stepprune.schema import Step
from stepprune.steps import BlockBreakWatcher, IncrementalSegmenter, block_breaks

if TYPE_CHECKING:
    from stepprune.session import Session


@dataclass(frozen=True)
class OnlineTask:
    """One online generation: what ``OnlinePruner(session, config).run(prompt_ids, sampling,
    seed, forced_reasoning, ...)`` would run."""

    prompt_ids: list[int]
    config: OnlineConfig
    seed: int
    forced_reasoning: list[int] | None = None


def probe_scorer(scorer):
    """The scorer when it scores cached steps by a probe's attention, else None."""
    from stepprune.scorers.attention import AttentionScorer

    ok = isinstance(scorer, AttentionScorer) and scorer.online_problem() is None
    return scorer if ok else None


def steps_only(scorer) -> bool:
    """Whether the scorer reads the steps alone (no forward at a checkpoint)."""
    from stepprune.scorers.baselines import StepsOnly

    return isinstance(scorer, StepsOnly)


def batchable(scorer) -> bool:
    """Whether ``run_rows`` can run online generations scored by ``scorer``."""
    return probe_scorer(scorer) is not None or steps_only(scorer)


class _Row:
    """One generation's own state: ids, result, sampler, checkpoint clock."""

    def __init__(self, pruner: OnlinePruner, task: OnlineTask, sampling: SamplingConfig) -> None:
        self.pruner, self.task = pruner, task
        self.all_ids = list(task.prompt_ids)
        self.start = len(task.prompt_ids)
        self.result = OnlineResult([], 0, 0, 0, 0)
        self.sample = RowSampler(task.seed, sampling)
        self.watch = BlockBreakWatcher()
        self.in_reasoning, self.since_check, self.drawn = True, 0, 0
        self.logits: torch.Tensor | None = None  # (vocab,) the next token's logits
        self.scoring: list[Step] | None = None  # the steps this forward's checkpoint scores
        self.closing = False  # this forward's token is </think>
        self.done = False


class _Driver:
    """The rows of one batch and what they share: session, batch cache, probe.

    A checkpoint's steps are known before the forward that puts its last token in the cache
    (they depend on the ids only), so a probe scorer's probe rides in that same forward, after
    the row's new ids: it attends to exactly the cache ``OnlinePruner._checkpoint`` probes, and
    leaves again after the forward. Checkpoints cost no forward of their own.
    """

    def __init__(self, session: Session, tasks: Sequence[OnlineTask], sampling: SamplingConfig):
        self.session, self.model, self.fmt = session, session.model, session.format
        self.eos_ids = list(session.eos_ids)
        self.scorer = session.scorer
        self.probe = self.scorer.probe_ids(self.fmt) if probe_scorer(self.scorer) else []
        self.rows = []
        for task in tasks:
            pruner = OnlinePruner(session, task.config)
            pruner.eos_ids = self.eos_ids
            pruner.segment = IncrementalSegmenter(session.segmenter, self.fmt.tokenizer)
            self.rows.append(_Row(pruner, task, sampling))
        # One prefill per distinct prompt, copied into every row that starts from it.
        prefilled: dict[tuple[int, ...], tuple] = {}
        for task in tasks:
            key = tuple(task.prompt_ids)
            if key not in prefilled:
                prefilled[key] = prefill(self.model, task.prompt_ids)
        states = [prefilled[tuple(t.prompt_ids)][0] for t in tasks]
        self.batch = OnlineRows(self.model, states)
        for row, state in zip(self.rows, states, strict=True):
            row.logits = prefilled[tuple(row.task.prompt_ids)][1]
            row.result.peak_cache_tokens = state.length
        self.full_layers = [i for i, kind in enumerate(self.batch.types) if kind == FULL]

    # -- one batched forward, with checkpoints ------------------------------------------------

    def plan(self, r: int) -> None:
        """Row ``r``'s new ids are in ``all_ids``: the steps its checkpoint will score (None
        when fewer than two are eligible)."""
        row = self.rows[r]
        steps = row.pruner.candidates(row.all_ids, row.start, row.result)
        row.scoring = steps if len(steps) >= 2 else None

    def forward(self, inputs: list[list[int]]) -> torch.Tensor:
        """Forward every row's ``inputs`` (the probe appended for rows with a checkpoint to
        score), then let those rows score and evict. Returns ``(rows, vocab)`` logits."""
        probing = [r for r, row in enumerate(self.rows) if row.scoring and self.probe]
        for r in probing:
            inputs[r] = inputs[r] + self.probe
        dropped = [len(self.probe) if r in probing else 0 for r in range(len(self.rows))]
        capture = RowsCapture(self.full_layers) if probing else None
        width = max(len(ids) for ids in inputs)
        for r in probing:
            steps, n = self.rows[r].scoring, len(inputs[r])
            buckets = self.batch.buckets(r, steps, width).to(self.model.device)
            capture.add(r, range(n - len(self.probe), n), buckets, len(steps) + 1)
        with recording(self.model, capture) if capture else contextlib.nullcontext():
            logits = self.batch.step(inputs, dropped)
        for r, row in enumerate(self.rows):
            if inputs[r]:
                length = self.batch.length(r)
                row.result.peak_cache_tokens = max(row.result.peak_cache_tokens, length)
            if row.closing:
                row.closing, row.in_reasoning = False, False
                row.result.reasoning_end = len(row.all_ids) - 1
                row.result.cache_tokens = self.batch.length(r)
            if row.scoring:
                steps, row.scoring = row.scoring, None
                if r in probing:
                    mass = capture.rows[r].stacked().double().cpu()
                    scores = self._probe_scores(mass, steps)
                else:
                    scores = self.scorer.score_cache(self.model, self.fmt, None, steps)
                at = len(row.all_ids)
                evict = row.pruner.decide(scores, steps, self.batch.length(r), at, row.result)
                self.batch.evict(r, evict)
        if self.batch.wasted():
            self.batch.compact()
        return logits

    def _probe_scores(self, mass: torch.Tensor, steps: list[Step]) -> list[float]:
        """``AttentionScorer.score_cache``'s scores from the captured ``mass`` ``(layers,
        heads, len(probe), len(steps) + 1)``: the same reduction, step by step."""
        scorer = self.scorer
        mass = mass[..., : len(steps)][:, :, scorer.probe_queries(self.probe, self.fmt)]
        if scorer.agg == "mean":
            mass = mass / torch.tensor([s.num_tokens for s in steps], dtype=mass.dtype)
        return scorer._reduce(mass)

    # -- generated rows -----------------------------------------------------------------------

    def generate(self, max_new_tokens: int) -> None:
        """``OnlinePruner._generate`` of every row, one batched forward per step."""
        while True:
            inputs: list[list[int]] = [[] for _ in self.rows]
            for r, row in enumerate(self.rows):
                if row.done:
                    continue
                token = row.sample(row.logits)
                row.all_ids.append(token)
                row.drawn += 1
                if token in self.eos_ids:
                    self.finish_generated(r)
                    continue
                inputs[r] = [token]
                self.before_forward(r, token)
            if not any(inputs):
                return
            logits = self.forward(inputs)
            for r, row in enumerate(self.rows):
                if inputs[r]:
                    row.logits = logits[r]
                    if row.drawn >= max_new_tokens:
                        self.finish_generated(r)

    def before_forward(self, r: int, token: int) -> None:
        """Row ``r`` drew ``token``: is it the end of reasoning, or a due checkpoint?"""
        row, config = self.rows[r], self.rows[r].pruner.config
        if not row.in_reasoning:
            return
        if token == self.fmt.think_close_id:
            row.closing = True
            return
        row.since_check += 1
        if config.interval:
            due = row.since_check >= config.interval
        else:
            due = row.watch.feed(self.fmt.tokenizer.decode([token]))
        if due:
            row.since_check = 0
            self.plan(r)

    def finish_generated(self, r: int) -> None:
        row, result = self.rows[r], self.rows[r].result
        row.done = True
        ended = row.all_ids[-1] in self.eos_ids
        result.answer_truncated = not ended
        if row.in_reasoning:
            result.reasoning_end = len(row.all_ids) - (1 if ended else 0)
            result.cache_tokens = self.batch.length(r)
        result.output_ids = row.all_ids[row.start :]
        result.final_cache_tokens = self.batch.length(r)
        result.peak_cache_tokens = max(result.peak_cache_tokens, result.final_cache_tokens)

    # -- teacher-forced rows ------------------------------------------------------------------

    def force(self, forced: list[int], answer_max_tokens: int) -> None:
        """``OnlinePruner.run`` with ``forced_reasoning`` for every row (same ids, same
        checkpoints: one forward per chunk), then each row's cue and greedy answer as rows of
        one batch."""
        interval = self.rows[0].pruner.config.interval
        breaks = block_breaks(self.fmt.tokenizer.batch_decode([[t] for t in forced]))
        start = 0
        for i in range(len(forced)):
            at_interval = interval and (i + 1 - start) >= interval
            if not (i + 1 == len(forced) or at_interval or (not interval and breaks[i])):
                continue
            chunk = forced[start : i + 1]
            start = i + 1
            for r, row in enumerate(self.rows):
                row.all_ids.extend(chunk)
                self.plan(r)
            self.forward([list(chunk) for _ in self.rows])
        self.answer(answer_max_tokens)

    def answer(self, max_new_tokens: int) -> None:
        """Each row's cue after what it still caches of the reasoning, then greedy answers."""
        cues = []
        for r, row in enumerate(self.rows):
            result = row.result
            result.reasoning_end = len(row.all_ids)
            result.cache_tokens = self.batch.length(r)
            gone = result.evicted_positions
            cached = [row.all_ids[p] for p in range(row.start, len(row.all_ids)) if p not in gone]
            cues.append(cue_after(self.fmt, cached))
        rule = StopRule(self.fmt.tokenizer, self.eos_ids, self.fmt.answer_cue_text())
        answers = decode_rows(self.batch, cues, max_new_tokens, rule)
        for row, cue, answer in zip(self.rows, cues, answers, strict=True):
            result = row.result
            result.answer, result.cue_tokens = answer, len(cue)
            result.output_ids = row.all_ids[row.start :] + cue + answer.ids
            # decode_greedy forwards every answer token but one that stopped the answer.
            forwarded = len(answer.ids) - (0 if answer.stop == LENGTH else 1)
            result.final_cache_tokens = result.cache_tokens + len(cue) + max(forwarded, 0)
            result.peak_cache_tokens = max(result.peak_cache_tokens, result.final_cache_tokens)


@torch.inference_mode()
def decode_rows(
    batch: OnlineRows, cues: Sequence[list[int]], max_new_tokens: int, rule: StopRule
) -> list[Continuation]:
    """``kvcache.decode_greedy`` of every row of ``batch`` after its own cue (as
    ``kvcache.decode_greedy_rows``, on a batch that already holds the rows); finished rows
    leave the batch."""
    return decode_batch_rows(batch, cues, max_new_tokens, rule)


@torch.inference_mode()
def run_rows(
    session: Session,
    tasks: Sequence[OnlineTask],
    sampling: SamplingConfig,
    answer_max_tokens: int = 512,
) -> list[OnlineResult]:
    """``OnlinePruner(session, t.config).run(...)`` of every task, as rows of batches: the
    generated tasks in one batch, the teacher-forced ones in one batch per forced reasoning
    and checkpoint interval. ``session.scorer`` must be ``batchable``.

    Returns:
        One ``OnlineResult`` per task, in order.
    """
    if not batchable(session.scorer):
        raise ValueError(f"scorer {session.scorer.spec!r} does not score rows in a batch")
    groups: dict[tuple, list[int]] = {}
    for i, task in enumerate(tasks):
        forced = task.forced_reasoning
        key = ("generated",) if forced is None else (tuple(forced), task.config.interval)
        groups.setdefault(key, []).append(i)
    results: list[OnlineResult | None] = [None] * len(tasks)
    for key, members in groups.items():
        driver = _Driver(session, [tasks[i] for i in members], sampling)
        if key == ("generated",):
            driver.generate(sampling.max_new_tokens)
        else:
            driver.force(list(key[0]), answer_max_tokens)
        for i, row in zip(members, driver.rows, strict=True):
            results[i] = row.result
    return results


def row_width(task: OnlineTask, sampling: SamplingConfig, answer_max_tokens: int) -> int:
    """The most positions a row's cache can reach (no eviction): its prompt, its new tokens
    (or forced reasoning, cue and answer), and a probe's worth of slack."""
    if task.forced_reasoning is None:
        return len(task.prompt_ids) + sampling.max_new_tokens + 64
    return len(task.prompt_ids) + len(task.forced_reasoning) + answer_max_tokens + 64


def pack_units(sizes: Sequence[tuple[int, int]], capacity: int) -> list[list[int]]:
    """Consecutive groups of units (``sizes[u]``: its rows and widest row) whose padded batch
    (rows x widest row) fits ``capacity`` positions; a unit too large alone is its own group."""
    groups: list[list[int]] = []
    rows = widest = 0
    for index, (unit_rows, width) in enumerate(sizes):
        grown_rows, grown_widest = rows + unit_rows, max(widest, width)
        if groups and grown_rows * grown_widest <= capacity:
            groups[-1].append(index)
            rows, widest = grown_rows, grown_widest
        else:
            groups.append([index])
            rows, widest = unit_rows, width
    return groups


def run_units(
    session: Session,
    units: Sequence[Sequence[OnlineTask]],
    sampling: SamplingConfig,
    answer_max_tokens: int,
    batch_mib: int,
) -> list[list[OnlineResult]]:
    """``run_rows`` of several traces' tasks (``units[u]``: one trace's), consecutive traces
    sharing a batch while its cache fits ``batch_mib`` MiB (``kvunits.budget_entries``).

    Returns:
        One list of results per unit, in order.
    """
    from stepprune.kvunits import budget_entries

    model = session.model
    capacity = budget_entries(model.config, model.dtype, batch_mib, model.device)
    sizes = [
        (len(tasks), max((row_width(t, sampling, answer_max_tokens) for t in tasks), default=0))
        for tasks in units
    ]
    results: list[list[OnlineResult]] = [[] for _ in units]
    for group in pack_units(sizes, capacity):
        flat = [task for u in group for task in units[u]]
        done = iter(run_rows(session, flat, sampling, answer_max_tokens))
        for u in group:
            results[u] = [next(done) for _ in units[u]]
    return results
