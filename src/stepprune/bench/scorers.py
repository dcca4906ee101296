"""Ground-truth benchmark of step scorers on the planted set (``stepprune bench scorers``).

The planted problems (:mod:`stepprune.planted`) carry program-written reasoning whose steps are
labelled ``necessary`` (they carry the intermediate results) or ``planted`` (restatements,
irrelevant facts, re-checks, abandoned false starts), matched in length and position. Their
traces are teacher-forced, so no reasoning is generated and every label is known. For each
scorer the benchmark reports:

- **AUROC** of the step scores, necessary (positive) against planted (negative), with a 95%
  bootstrap confidence interval over traces (:mod:`stepprune.bench.auroc`);
- **answer recovery** at each pruning threshold: the fraction of traces whose answer is still
  correct when the model answers again from the steps the percentile policy keeps;
- **lift** of the AUROC over the length and position baselines (always computed, whether or not
  they are among the scorers asked for).

Every stage is the pipeline's own, through one ``Session``: traces from
``Session.finish_trace`` (teacher-forced, segmented, labelled), scores from ``Session.score``
with each scorer, keep masks from ``Session.keep_masks``, answers from text mode
(``TextMode.evaluate``), grades from ``Session.grade``. So it measures exactly what
``stepprune run --mode text`` would do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from stepprune.bench.auroc import auroc, auroc_bootstrap_ci, auroc_difference
from stepprune.grading import Grader
from stepprune.modes import Pruning, TextMode
from stepprune.planted import CAUSAL, MATCHED, SEMANTIC, generate_variant
from stepprune.policies import POLICIES
from stepprune.runfolder import threshold_key
from stepprune.schema import Problem, Trace
from stepprune.scorers import SCORERS, Scorer
from stepprune.session import Session
from stepprune.stats import DEFAULT_RESAMPLES, bootstrap_ci
from stepprune.traces import teacher_forced_output

# The scorers both benchmarks (planted, and --run) run by default, the one list to extend: the
# notebook's score, each attention option on its own, the other cheap scorers (each a few
# forwards per trace, with their default options), the ablation reference, and the baselines.
# ``resampling`` is left out: it samples (steps + 1) x k answers per trace.
DEFAULT_SCORERS: tuple[str, ...] = (
    "attention",
    "attention:agg=mean",
    "attention:layers=first-half",
    "attention:layers=last-half",
    "attention:heads=max",
    "attention:heads=receiver",
    "attention:sink=exclude",
    "attention:query=reasoning_end",
    "attention:query=answer",
    "attention:query=answer,answer=reference",
    "attention:query=probe",
    "attention:query=probe,probe_tokens=all",
    "attention:query=probe,agg=mean",
    "entropy",
    "entropy:agg=mean",
    "redundancy",
    "step-redundancy",
    "forced-answer",
    "attribution",
    "attribution:answer=reference",
    "mix:a=attention,b=entropy",
    "ablation",
    "random",
    "length",
    "position",
    "uniform",
    "form",
)
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
DEFAULT_PROBLEMS = 30
# The cue ends in "\boxed{", so an answer is a number and a brace: a few tokens. The budget only
# bounds a model that rambles instead (answers stop at their first complete box anyway).
DEFAULT_ANSWER_MAX_TOKENS = 16
# The causal set's answer is a list of up to four two-digit numbers ("16, 36, 13, 48}"): about
# twice as many tokens.
# The matched set's answer is a list of two or three of them.
ANSWER_MAX_TOKENS = {
    SEMANTIC: DEFAULT_ANSWER_MAX_TOKENS,
    CAUSAL: 2 * DEFAULT_ANSWER_MAX_TOKENS,
    MATCHED: 2 * DEFAULT_ANSWER_MAX_TOKENS,
}
# The benchmark's ground truth by default: the form-matched set, whose labels neither the form
# of a step (its numbers and ``=`` signs), its length nor its position predicts.
DEFAULT_BENCH_VARIANT = MATCHED
LENGTH_BASELINE = "length"
POSITION_BASELINE = "position"
PRUNING_POLICY = "percentile"


@dataclass
class ScorerResult:
    """Benchmark numbers of one scorer.

    ``recovery`` maps a threshold key (``"0.0"``, ``"0.1"``, ...) to the fraction of traces whose
    re-evaluated answer is correct at that threshold. ``lift_over_length``/``_position`` are this
    scorer's AUROC minus the AUROC of the length/position baseline on the same traces.
    ``oracle``: the scorer reads the reference answer (``reads_gold``: ablation, forced-answer,
    ``attribution:answer=reference``, ``attention:query=answer,answer=reference``) or the
    teacher-forced answer section holding it (``attention:query=last``, the token after it), so
    it is a reference, not comparable like for like with answer-free scorers.
    ``lift_*_ci95``: paired bootstrap intervals of the lifts (both AUROCs recomputed on each
    resample of the traces, :func:`auroc_difference`); ``recovery_ci95``: a bootstrap interval
    of each recovery over traces. ``n_traces`` and ``n_skipped`` (traces used, and left out
    because segmentation did not find one step per label) describe the run and are not part of
    :meth:`to_json`.
    """

    scorer: str
    auroc: float
    ci95: tuple[float, float]
    recovery: dict[str, float]
    lift_over_length: float
    lift_over_position: float
    oracle: bool = False
    n_traces: int = 0
    n_skipped: int = 0
    lift_over_length_ci95: tuple[float, float] = (math.nan, math.nan)
    lift_over_position_ci95: tuple[float, float] = (math.nan, math.nan)
    recovery_ci95: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``stepprune bench scorers --json`` for this scorer."""
        return {
            "scorer": self.scorer,
            "oracle": self.oracle,
            "auroc": self.auroc,
            "ci95": [self.ci95[0], self.ci95[1]],
            "recovery": dict(self.recovery),
            "recovery_ci95": {k: [lo, hi] for k, (lo, hi) in self.recovery_ci95.items()},
            "lift_over_length": self.lift_over_length,
            "lift_over_length_ci95": list(self.lift_over_length_ci95),
            "lift_over_position": self.lift_over_position,
            "lift_over_position_ci95": list(self.lift_over_position_ci95),
        }


# -- the benchmark -----------------------------------------------------------------------------


def labelled_traces(
    session: Session, problems: Sequence[Problem]
) -> tuple[list[tuple[Problem, Trace]], list[str]]:
    """Teacher-forced, segmented traces whose steps carry the problems' labels (not scored).

    Returns the usable ``(problem, trace)`` pairs and the ids of problems left out because
    segmentation did not find exactly one step per labelled paragraph (their labels would not
    line up with the steps).
    """
    usable, skipped = [], []
    for problem in problems:
        prompt = session.prompt_ids(problem)
        output, length = teacher_forced_output(session.format, problem, prompt, session.eos_ids[0])
        trace = session.finish_trace(problem, 0, prompt, output, length, score=False)
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


def _score_all(
    session: Session, scorers: Sequence[Scorer], items: Sequence[tuple[Problem, Trace]], bar
) -> dict[str, list[list[float]]]:
    """Step scores of every trace under every scorer, by spec (a spec listed twice is scored
    once)."""
    task = bar.add_task("scoring", total=len(scorers) * len(items))
    scores: dict[str, list[list[float]]] = {}
    for scorer in scorers:
        if scorer.spec in scores:
            bar.advance(task, len(items))
            continue
        bar.update(task, description=f"scoring {scorer.spec}")
        per_trace = []
        for problem, trace in items:
            values = session.score(trace, problem, scorer=scorer)
            if len(values) != len(trace.steps):
                raise ValueError(
                    f"scorer {scorer.spec} gave {len(values)} scores for "
                    f"{len(trace.steps)} steps of {trace.problem_id}"
                )
            per_trace.append(list(values))
            bar.advance(task)
        scores[scorer.spec] = per_trace
    return scores


def _correct_answers(
    session: Session,
    items: Sequence[tuple[Problem, Trace]],
    prunings: Sequence[list[Pruning]],
    answer_max_tokens: int,
    bar,
) -> list[list[bool]]:
    """Whether the text-mode answer of each pruning of each trace is correct, in order.

    Text mode answers each distinct keep mask of a trace once (greedy answers depend on the
    context only); each distinct answer is graded once.
    """
    mode = TextMode(answer_max_tokens=answer_max_tokens)
    task = bar.add_task("answering", total=len(items))
    correct = []
    for (problem, trace), trace_prunings in zip(items, prunings, strict=True):
        outcomes = mode.evaluate(session, problem, trace, trace_prunings)
        grades: dict[tuple[bool, ...], bool] = {}
        for outcome in outcomes:
            mask = tuple(outcome.keep)
            if mask not in grades:
                text = session.answer_text(outcome.answer.content_ids)
                grades[mask] = session.grade(problem, text).correct
        correct.append([grades[tuple(o.keep)] for o in outcomes])
        bar.advance(task)
    return correct


def run_scorer_benchmark(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    scorer_specs: Sequence[str] | None = None,
    n_problems: int = DEFAULT_PROBLEMS,
    seed: int = 0,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    answer_max_tokens: int | None = None,
    progress: bool = True,
    n_resamples: int = DEFAULT_RESAMPLES,
    console: Console | None = None,
    planted: str = DEFAULT_BENCH_VARIANT,
) -> list[ScorerResult]:
    """Run every scorer on ``n_problems`` planted problems; one result per spec, in order.

    Args:
        model, tokenizer: Any causal LM of the pipeline (e.g. from ``load_model``).
        scorer_specs: Scorer spec strings; None runs ``DEFAULT_SCORERS``. An unknown
            scorer or option raises the registry's ``SpecError`` before any work is done.
        n_problems, seed: Size and seed of the planted set (``generate_variant``); ``seed`` also
            seeds the bootstrap.
        thresholds: Pruning thresholds of the percentile policy, each in [0, 1).
        answer_max_tokens: Budget of each re-evaluated answer (None: the variant's
            ``ANSWER_MAX_TOKENS``).
        progress: Show a progress bar (on ``console``, stderr by default).
        n_resamples: Bootstrap resamples of the confidence interval.
        console: Where the progress bar and warnings go.
        planted: The planted set's variant: ``matched`` (the default), ``causal`` or
            ``semantic`` (``stepprune.planted.PLANTED_VARIANTS``).

    Scorers get the chat format and the problem's reference answer (``Session.score``), which
    the probe-query attention and the ablation scorers need.

    Answers are greedy, so an answer depends on its context only: text mode answers each
    distinct keep mask of a trace once, shared by every scorer and threshold that yields it.
    Most masks repeat (threshold 0 keeps every step for all scorers, and baselines often agree),
    which is what keeps the benchmark within minutes on a CPU.
    """
    if n_problems < 1:
        raise ValueError(f"n_problems must be >= 1, got {n_problems}")
    problems = generate_variant(planted, n_problems, seed)  # an unknown variant fails here
    if answer_max_tokens is None:
        answer_max_tokens = ANSWER_MAX_TOKENS[planted]
    if answer_max_tokens < 1:
        raise ValueError(f"answer_max_tokens must be >= 1, got {answer_max_tokens}")
    specs = list(DEFAULT_SCORERS if scorer_specs is None else scorer_specs)
    if not specs:
        raise ValueError("give at least one scorer spec")
    scorers: list[Scorer] = [SCORERS.build(spec) for spec in specs]
    # Baselines for the lifts: reuse a listed scorer with the same spec, else score it here.
    listed = {scorer.spec for scorer in scorers}
    baselines = {name: SCORERS.build(name) for name in (LENGTH_BASELINE, POSITION_BASELINE)}
    extra = [b for b in baselines.values() if b.spec not in listed]
    policy = POLICIES.build(PRUNING_POLICY)
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ValueError("give at least one threshold")
    for t in thresholds:
        policy.keep([1.0], t)  # validates the threshold before the expensive work

    console = console or Console(stderr=True)
    with Grader() as grader, _progress(console, progress) as bar:
        session = Session(model, tokenizer, scorer=scorers[0], policy=policy, grader=grader)
        items, skipped = labelled_traces(session, problems)
        if skipped:
            console.print(
                f"[yellow]warning:[/yellow] {len(skipped)} of {n_problems} planted traces left "
                f"out: segmentation did not find one step per label ({', '.join(skipped[:8])})",
                highlight=False,
            )
        if not items:
            raise RuntimeError("no planted trace segmented into one step per label")
        scores = _score_all(session, scorers + extra, items, bar)
        # Per trace, every listed scorer's keep mask at every threshold (scorer-major).
        prunings = [
            [
                Pruning(scorer.spec, t, mask)
                for scorer in scorers
                for t, mask in zip(
                    thresholds, session.keep_masks(scores[scorer.spec][i], thresholds), strict=True
                )
            ]
            for i in range(len(items))
        ]
        correct = _correct_answers(session, items, prunings, answer_max_tokens, bar)

    labels = [[s.label or "" for s in trace.steps] for _, trace in items]
    baseline_auroc = {name: auroc(scores[b.spec], labels) for name, b in baselines.items()}
    results = []
    n_thresholds = len(thresholds)
    for k, scorer in enumerate(scorers):
        value = auroc(scores[scorer.spec], labels)
        # Scorer k's prunings of a trace are its entries k * n_thresholds + j, threshold j.
        hits = [sum(row[k * n_thresholds + j] for row in correct) for j in range(n_thresholds)]
        recovery = {
            threshold_key(t): hit / len(items) for t, hit in zip(thresholds, hits, strict=True)
        }
        # The traces' 0/1 outcomes at each threshold, resampled over traces.
        recovery_ci = {
            threshold_key(t): bootstrap_ci(
                [float(row[k * n_thresholds + j]) for row in correct], n_resamples, seed
            )
            for j, t in enumerate(thresholds)
        }
        # Same seed as every AUROC interval: the same trace resamples for every scorer.
        lift_ci = {
            name: auroc_difference(scores[scorer.spec], scores[b.spec], labels, n_resamples, seed)[
                1
            ]
            for name, b in baselines.items()
        }
        results.append(
            ScorerResult(
                scorer=scorer.spec,
                auroc=value,
                # A different seed per scorer would make CIs depend on list order; one seed
                # resamples the same traces for every scorer, so their CIs are comparable.
                ci95=auroc_bootstrap_ci(scores[scorer.spec], labels, n_resamples, seed=seed),
                recovery=recovery,
                lift_over_length=value - baseline_auroc[LENGTH_BASELINE],
                lift_over_position=value - baseline_auroc[POSITION_BASELINE],
                oracle=scorer.oracle_on_teacher_forced,
                n_traces=len(items),
                n_skipped=len(skipped),
                lift_over_length_ci95=lift_ci[LENGTH_BASELINE],
                lift_over_position_ci95=lift_ci[POSITION_BASELINE],
                recovery_ci95=recovery_ci,
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
            f"`{r.scorer}`" + (" (oracle)" if r.oracle else ""),
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
        note += "; AUROC on within-trace ranks, CI by resampling traces"
        if any(r.oracle for r in results):
            note += "; (oracle): reads the reference answer, a reference only"
        lines += ["", note + "."]
    return "\n".join(lines) + "\n"
