"""The Python API: the pipeline's stages as plain functions, for your own generation loop.

    ids + step spans -> score_steps() -> importances -> keep_masks() -> masks
                     -> reevaluation_context() -> ids to answer from
    RunConfig -> run() -> summary (and a run folder)

Token positions are indices into ``ids`` (prompt + generated tokens), spans end exclusive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from stepprune.config import RunConfig
from stepprune.context import text_context
from stepprune.models import ChatFormat
from stepprune.policies import POLICIES
from stepprune.schema import Step, Trace
from stepprune.scorers import SCORERS


def make_trace(
    tokenizer: PreTrainedTokenizerBase,
    ids: Sequence[int],
    spans: Sequence[tuple[int, int]],
    reasoning_end: int | None = None,
    prompt_length: int | None = None,
) -> Trace:
    """A trace over ``ids`` whose reasoning steps are ``spans``.

    Args:
        ids: Prompt and generated token ids, exactly as the model saw them.
        spans: ``[(start, end), ...]`` of each step, in order, non-overlapping.
        reasoning_end: Where the reasoning ends (for thinking models the position of
            ``</think>``); default: the end of the last span.
        prompt_length: Where the prompt ends; default: the start of the first span.
    """
    ids = list(ids)
    if not spans:
        raise ValueError("give at least one step span")
    for (start, end), (next_start, _) in zip(spans, [*spans[1:], (len(ids), 0)], strict=True):
        if not 0 <= start < end <= next_start or end > len(ids):
            raise ValueError(f"step span ({start}, {end}) is empty, out of order or outside ids")
    start = spans[0][0] if prompt_length is None else prompt_length
    end = spans[-1][1] if reasoning_end is None else reasoning_end
    steps = [
        Step(index=i, start=a, end=b, text=tokenizer.decode(ids[a:b]))
        for i, (a, b) in enumerate(spans)
    ]
    return Trace(
        problem_id="api",
        sample=0,
        prompt_ids=ids[:start],
        output_ids=ids[start:],
        reasoning_start=start,
        reasoning_end=end,
        finished_reasoning=True,
        hit_eos=False,
        teacher_forced=True,
        truncated=False,
        steps=steps,
    )


def score_steps(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    ids: Sequence[int],
    spans: Sequence[tuple[int, int]],
    scorer: str = "attention",
    gold: str | None = None,
    reasoning_end: int | None = None,
) -> list[float]:
    """Importance of each step span of ``ids`` under a scorer spec (normalised to sum to 1).

    ``gold`` (the reference answer) is needed by ``ablation`` only.
    """
    trace = make_trace(tokenizer, ids, spans, reasoning_end)
    return SCORERS.build(scorer).score(model, trace, ChatFormat.from_tokenizer(tokenizer), gold)


def keep_masks(
    importances: Sequence[float], thresholds: Sequence[float], policy: str = "percentile"
) -> list[list[bool]]:
    """One keep mask per threshold (a flag per step) under a pruning policy spec."""
    built = POLICIES.build(policy)
    return [built.keep(importances, t) for t in thresholds]


def reevaluation_context(
    tokenizer: PreTrainedTokenizerBase,
    ids: Sequence[int],
    spans: Sequence[tuple[int, int]],
    keep: Sequence[bool],
    reasoning_end: int | None = None,
) -> list[int]:
    """Token ids the model answers from: the prompt, the kept steps with their own separators,
    and the end-of-reasoning cue (never anything after the reasoning)."""
    trace = make_trace(tokenizer, ids, spans, reasoning_end)
    return text_context(ChatFormat.from_tokenizer(tokenizer), trace, keep)


def run(config: RunConfig | None = None, **settings: Any) -> dict[str, Any]:
    """Run (or resume) an experiment: a ``RunConfig`` or its fields as keywords.

    Returns the summary (the contents of summary.json); files go to ``config.output_dir()``.
    """
    from stepprune.experiment import run_experiment  # loads torch-heavy modules on use only

    summary, _ = run_experiment(config or RunConfig.from_flat(**settings))
    return summary.to_json()
