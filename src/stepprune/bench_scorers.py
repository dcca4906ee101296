"""Ground-truth benchmark of step scorers on the planted set (``stepprune bench scorers``).

The planted problems (:mod:`stepprune.planted`) carry program-written reasoning whose steps are
labelled ``necessary`` (they carry the intermediate results) or ``planted`` (restatements,
irrelevant facts, re-checks, abandoned false starts), matched in length and position. Their
traces are teacher-forced, so no reasoning is generated and every label is known. For each
scorer the benchmark reports:

- **AUROC** of the step scores, necessary (positive) against planted (negative), with a 95%
  bootstrap confidence interval over traces;
- **answer recovery** at each pruning threshold: the fraction of traces whose answer is still
  correct when the model answers again from the steps the percentile policy keeps;
- **lift** of the AUROC over the length and position baselines (always computed, whether or not
  they are among the scorers asked for).

It uses the pipeline's own pieces (chat format, teacher forcing, segmentation, scorers, pruning
policy, re-evaluation, grading), so it measures exactly what ``stepprune run`` would do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from stepprune.generation import build_trace, teacher_forced_output
from stepprune.grading import Grader
from stepprune.models import ChatFormat, eos_token_ids
from stepprune.planted import NECESSARY, PLANTED, generate_planted
from stepprune.pruning import POLICIES
from stepprune.reeval import Answer, generate_answers, text_context
from stepprune.schema import Problem, Trace
from stepprune.scorers import SCORERS, Scorer
from stepprune.steps import attach_labels, segment_paragraphs
from stepprune.store import threshold_key

# The scorers the benchmark runs by default: the notebook's score, each attention option on its
# own, the ablation reference, and the baselines.
DEFAULT_SCORERS: tuple[str, ...] = (
    "attention",
    "attention:agg=mean",
    "attention:layers=first-half",
    "attention:layers=last-half",
    "attention:heads=max",
    "attention:heads=receiver",
    "attention:sink=exclude",
    "attention:query=answer",
    "attention:query=probe",
    "attention:query=probe,agg=mean",
    "ablation",
    "random",
    "length",
    "position",
    "uniform",
)
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
DEFAULT_PROBLEMS = 30
# The cue ends in "\boxed{", so an answer is a number and a brace: a few tokens. The budget only
# bounds a model that rambles instead (answers stop at their first complete box anyway).
DEFAULT_ANSWER_MAX_TOKENS = 16
DEFAULT_RESAMPLES = 1000
# Contexts per generate call; also the granularity of the progress bar while answering.
ANSWER_BATCH_SIZE = 8
LENGTH_BASELINE = "length"
POSITION_BASELINE = "position"
PRUNING_POLICY = "percentile"


@dataclass
class ScorerResult:
    """Benchmark numbers of one scorer.

    ``recovery`` maps a threshold key (``"0.0"``, ``"0.1"``, ...) to the fraction of traces whose
    re-evaluated answer is correct at that threshold. ``lift_over_length``/``_position`` are this
    scorer's AUROC minus the AUROC of the length/position baseline on the same traces.
    ``n_traces`` and ``n_skipped`` (traces used, and left out because segmentation did not find
    one step per label) describe the run and are not part of :meth:`to_json`.
    """

    scorer: str
    auroc: float
    ci95: tuple[float, float]
    recovery: dict[str, float]
    lift_over_length: float
    lift_over_position: float
    n_traces: int = 0
    n_skipped: int = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``stepprune bench scorers --json`` for this scorer."""
        return {
            "scorer": self.scorer,
            "auroc": self.auroc,
            "ci95": [self.ci95[0], self.ci95[1]],
            "recovery": dict(self.recovery),
            "lift_over_length": self.lift_over_length,
            "lift_over_position": self.lift_over_position,
        }


# -- AUROC and its confidence interval ---------------------------------------------------------


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (as Mann-Whitney needs)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = ((starts + ends - 1) / 2 + 1)[group]
    return ranks


def _within_trace_ranks(scores: Sequence[float]) -> np.ndarray:
    """Percentile ranks in [0, 1] of one trace's scores: 0 for the lowest, 1 for the highest,
    ties sharing their mean rank; a single step gets 0.5."""
    values = np.asarray(scores, dtype=float)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"step scores must be finite, got {list(scores)}")
    if len(values) < 2:
        return np.full(len(values), 0.5)
    return (_average_ranks(values) - 1) / (len(values) - 1)


def _positive_mask(labels: Sequence[str]) -> np.ndarray:
    unknown = set(labels) - {NECESSARY, PLANTED}
    if unknown:
        raise ValueError(f"step labels must be {NECESSARY!r} or {PLANTED!r}, got {unknown}")
    return np.array([label == NECESSARY for label in labels], dtype=bool)


def _mann_whitney(values: np.ndarray, positive: np.ndarray) -> float:
    """P(positive > negative) + 0.5 P(tie) over all positive-negative pairs; NaN without both."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = float(_average_ranks(values)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _prepare(
    scores: Sequence[Sequence[float]], labels: Sequence[Sequence[str]]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} traces of scores but {len(labels)} of labels")
    ranks, positives = [], []
    for trace_scores, trace_labels in zip(scores, labels, strict=True):
        if len(trace_scores) != len(trace_labels):
            raise ValueError(
                f"a trace has {len(trace_scores)} scores but {len(trace_labels)} labels"
            )
        ranks.append(_within_trace_ranks(trace_scores))
        positives.append(_positive_mask(trace_labels))
    return ranks, positives


def auroc(scores: Sequence[Sequence[float]], labels: Sequence[Sequence[str]]) -> float:
    """AUROC of necessary (positive) against planted (negative) steps, pooled over traces.

    ``scores[i]`` and ``labels[i]`` are the step scores and labels of trace ``i``. Each trace's
    scores are first turned into percentile ranks within the trace (0 = its lowest step, 1 = its
    highest, ties sharing their mean rank): a scorer is used to rank the steps of one trace
    against each other, and its raw scale is not comparable across traces (scores sum to 1, so a
    trace with many steps has small scores everywhere; pooling raw scores would mostly compare
    traces, not steps). The ranks are pooled and compared with the Mann-Whitney statistic: the
    probability that a random necessary step ranks above a random planted one, ties counting
    one half. So 1 is perfect, 0 perfectly reversed, and 0.5 chance (a constant scorer scores
    exactly 0.5). NaN when either class is absent.
    """
    ranks, positives = _prepare(scores, labels)
    if not ranks:
        return math.nan
    return _mann_whitney(np.concatenate(ranks), np.concatenate(positives))


def bootstrap_ci(
    scores: Sequence[Sequence[float]],
    labels: Sequence[Sequence[str]],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`auroc`, resampling whole traces with replacement.

    Steps of one trace are not independent (they share a problem, a template and the scorer's
    view of that trace), so the unit of resampling is the trace. Resamples that happen to lack a
    class are skipped. Seeded: the same inputs give the same interval.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    ranks, positives = _prepare(scores, labels)
    if not ranks:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(n_resamples):
        chosen = rng.integers(0, len(ranks), size=len(ranks))
        value = _mann_whitney(
            np.concatenate([ranks[i] for i in chosen]),
            np.concatenate([positives[i] for i in chosen]),
        )
        if not math.isnan(value):
            estimates.append(value)
    if not estimates:
        return (math.nan, math.nan)
    tail = (1 - level) / 2
    low, high = np.quantile(estimates, [tail, 1 - tail])
    return (float(low), float(high))


# -- the benchmark -----------------------------------------------------------------------------


def labelled_traces(
    fmt: ChatFormat, problems: Sequence[Problem], eos_ids: list[int]
) -> tuple[list[tuple[Problem, Trace]], list[str]]:
    """Teacher-forced, segmented traces whose steps carry the problems' labels.

    Returns the usable ``(problem, trace)`` pairs and the ids of problems left out because
    segmentation did not find exactly one step per labelled paragraph (their labels would not
    line up with the steps).
    """
    usable, skipped = [], []
    for problem in problems:
        prompt = fmt.prompt_ids(problem.problem)
        output = teacher_forced_output(fmt, problem, prompt, eos_ids[0])
        trace = build_trace(fmt, problem, 0, prompt, output, eos_ids, teacher_forced=True)
        trace.steps = segment_paragraphs(
            fmt.tokenizer, trace.all_ids, trace.reasoning_start, trace.reasoning_end
        )
        attach_labels(trace.steps, problem.step_labels)
        if problem.step_labels and [s.label for s in trace.steps] == problem.step_labels:
            usable.append((problem, trace))
        else:
            skipped.append(problem.id)
    return usable, skipped


def _progress(console: Console, enabled: bool) -> Progress:
    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    return Progress(*columns, console=console, disable=not enabled)


def run_scorer_benchmark(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    scorer_specs: Sequence[str] | None = None,
    n_problems: int = DEFAULT_PROBLEMS,
    seed: int = 0,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    answer_max_tokens: int = DEFAULT_ANSWER_MAX_TOKENS,
    progress: bool = True,
    n_resamples: int = DEFAULT_RESAMPLES,
    console: Console | None = None,
) -> list[ScorerResult]:
    """Run every scorer on ``n_problems`` planted problems; one result per spec, in order.

    Args:
        model, tokenizer: Any causal LM of the pipeline (e.g. from ``load_model``).
        scorer_specs: Scorer spec strings; None runs ``DEFAULT_SCORERS``. An unknown
            scorer or option raises the registry's ``SpecError`` before any work is done.
        n_problems, seed: Size and seed of the planted set (``generate_planted``).
        thresholds: Pruning thresholds of the percentile policy, each in [0, 1).
        answer_max_tokens: Budget of each re-evaluated answer.
        progress: Show a progress bar (on ``console``, stderr by default).
        n_resamples: Bootstrap resamples of the confidence interval.
        console: Where the progress bar and warnings go.

    Scorers get the chat format and the problem's reference answer (``score(model, trace,
    fmt=..., gold=...)``), which the probe-query attention and the ablation scorers need.

    Answers are greedy, so an answer depends on its context only: each distinct (trace, keep
    mask) is answered and graded once and shared by every scorer and threshold that yields
    it. Most masks repeat (threshold 0 keeps every step for all scorers, and baselines often
    agree), which is what keeps the benchmark within minutes on a CPU.
    """
    if n_problems < 1:
        raise ValueError(f"n_problems must be >= 1, got {n_problems}")
    if answer_max_tokens < 1:
        raise ValueError(f"answer_max_tokens must be >= 1, got {answer_max_tokens}")
    specs = list(DEFAULT_SCORERS if scorer_specs is None else scorer_specs)
    if not specs:
        raise ValueError("give at least one scorer spec")
    scorers: list[Scorer] = [SCORERS.build(spec) for spec in specs]
    # Baselines for the lifts: reuse a listed scorer with the same spec, else score it here.
    by_spec = {scorer.spec: scorer for scorer in scorers}
    length = SCORERS.build(LENGTH_BASELINE)
    position = SCORERS.build(POSITION_BASELINE)
    extra = [b for b in (length, position) if b.spec not in by_spec]
    policy = POLICIES.build(PRUNING_POLICY)
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ValueError("give at least one threshold")
    for t in thresholds:
        policy.keep([1.0], t)  # validates the threshold before the expensive work

    console = console or Console(stderr=True)
    fmt = ChatFormat.from_tokenizer(tokenizer)
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    items, skipped = labelled_traces(fmt, generate_planted(n_problems, seed), eos_ids)
    if skipped:
        console.print(
            f"[yellow]warning:[/yellow] {len(skipped)} of {n_problems} planted traces left out: "
            f"segmentation did not find one step per label ({', '.join(skipped[:8])})",
            highlight=False,
        )
    if not items:
        raise RuntimeError("no planted trace segmented into one step per label")
    labels = [[s.label or "" for s in trace.steps] for _, trace in items]

    scores: dict[str, list[list[float]]] = {}
    with _progress(console, progress) as bar:
        task = bar.add_task("scoring", total=len(scorers + extra) * len(items))
        for scorer in scorers + extra:
            if scorer.spec in scores:  # the same spec listed twice is scored once
                bar.advance(task, len(items))
                continue
            bar.update(task, description=f"scoring {scorer.spec}")
            per_trace = []
            for problem, trace in items:
                values = scorer.score(model, trace, fmt=fmt, gold=problem.answer)
                if len(values) != len(trace.steps):
                    raise ValueError(
                        f"scorer {scorer.spec} gave {len(values)} scores for "
                        f"{len(trace.steps)} steps of {trace.problem_id}"
                    )
                per_trace.append(list(values))
                bar.advance(task)
            scores[scorer.spec] = per_trace

        # Keep masks of every listed scorer at every threshold; answer each distinct one once.
        masks: dict[tuple[str, int, float], tuple[bool, ...]] = {}
        for scorer in scorers:
            for index, trace_scores in enumerate(scores[scorer.spec]):
                for t in thresholds:
                    masks[scorer.spec, index, t] = tuple(policy.keep(trace_scores, t))
        unique = list(dict.fromkeys((index, mask) for (_, index, _), mask in masks.items()))
        contexts = {key: text_context(fmt, items[key[0]][1], key[1]) for key in unique}
        # Similar lengths in a batch waste less on padding.
        order = sorted(unique, key=lambda key: len(contexts[key]))
        answers: dict[tuple[int, tuple[bool, ...]], Answer] = {}
        task = bar.add_task("answering", total=len(order))
        for begin in range(0, len(order), ANSWER_BATCH_SIZE):
            batch = order[begin : begin + ANSWER_BATCH_SIZE]
            generated = generate_answers(
                model,
                [contexts[key] for key in batch],
                answer_max_tokens,
                pad_id,
                eos_ids,
                batch_size=ANSWER_BATCH_SIZE,
                box_stop=(tokenizer, fmt.answer_cue_text()),
            )
            answers.update(zip(batch, generated, strict=True))
            bar.advance(task, len(batch))

    correct: dict[tuple[int, tuple[bool, ...]], bool] = {}
    with Grader() as grader:
        for key in unique:
            text = fmt.answer_cue_text() + tokenizer.decode(
                answers[key].ids, skip_special_tokens=True
            )
            correct[key] = grader.grade(items[key[0]][0].answer, text).correct

    baseline_auroc = {
        name: auroc(scores[scorer.spec], labels)
        for name, scorer in ((LENGTH_BASELINE, length), (POSITION_BASELINE, position))
    }
    results = []
    for scorer in scorers:
        value = auroc(scores[scorer.spec], labels)
        recovery = {
            threshold_key(t): sum(correct[i, masks[scorer.spec, i, t]] for i in range(len(items)))
            / len(items)
            for t in thresholds
        }
        results.append(
            ScorerResult(
                scorer=scorer.spec,
                auroc=value,
                # A different seed per scorer would make CIs depend on list order; one seed
                # resamples the same traces for every scorer, so their CIs are comparable.
                ci95=bootstrap_ci(scores[scorer.spec], labels, n_resamples, seed=seed),
                recovery=recovery,
                lift_over_length=value - baseline_auroc[LENGTH_BASELINE],
                lift_over_position=value - baseline_auroc[POSITION_BASELINE],
                n_traces=len(items),
                n_skipped=len(skipped),
            )
        )
    return results


# -- report ------------------------------------------------------------------------------------


def _number(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def results_table_markdown(results: Sequence[ScorerResult]) -> str:
    """A Markdown table: scorer, AUROC, 95% CI, lifts, and answer recovery at each threshold.

    Thresholds are the union of the results' recovery keys, in numeric order; the table is
    followed by a line with the number of traces.
    """
    keys = sorted({key for r in results for key in r.recovery}, key=float)
    header = ["Scorer", "AUROC", "95% CI", "lift vs length", "lift vs position"]
    header += [f"recovery @ {key}" for key in keys]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for r in results:
        row = [
            f"`{r.scorer}`",
            _number(r.auroc),
            f"[{_number(r.ci95[0])}, {_number(r.ci95[1])}]",
            _number(r.lift_over_length, signed=True),
            _number(r.lift_over_position, signed=True),
        ]
        row += [f"{100 * r.recovery[key]:.0f}%" if key in r.recovery else "" for key in keys]
        lines.append("| " + " | ".join(row) + " |")
    if results:
        first = results[0]
        note = f"{first.n_traces} planted traces"
        if first.n_skipped:
            note += f" ({first.n_skipped} left out: segmentation did not match the labels)"
        lines += ["", note + "; AUROC on within-trace ranks, CI by resampling traces."]
    return "\n".join(lines) + "\n"
