"""Scorers against the causal reference on a finished run folder (``bench scorers --run DIR``).

The planted benchmark (:mod:`stepprune.bench.scorers`) needs labelled, program-written traces.
On a run folder made by ``stepprune run`` (any model, any dataset) there are no labels, so the
reference is the ``ablation`` scorer: the drop of the reference answer's log-probability when a
step is removed. For each scorer the benchmark reports

- **Spearman** rank correlation of its step scores with ablation's, per trace; averaged over the
  samples of a problem, then over problems, with a 95% bootstrap interval over problems
  (``stats.bootstrap_ci``). A trace with fewer than two steps, or where either ranking is
  constant (every step tied), has no correlation and is left out of the mean;
- **recovery** at each threshold: the share of traces still answered correctly when the model
  answers again from the steps that the percentile policy keeps (text mode, as
  ``bench scorers`` does), beside the same for a random scorer (the control).

Every ablation reference, scorer's scores and re-evaluated answer is appended to the folder's
``bench_scorers.jsonl`` (``runfolder.BENCH_SCORERS_FILE``) as soon as a trace is done, with the
writer's crash safety (one fsynced line per unit, a torn last line cut on the next open) and
under the folder's lock, so a re-run resumes where it stopped and recomputes nothing it has.
Scores the run itself holds (its scorer, ``scores.jsonl``) are reused too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from stepprune.bench.auroc import per_problem_mean, spearman
from stepprune.bench.scorers import DEFAULT_SCORERS
from stepprune.grading import Grader
from stepprune.modes import Pruning, TextMode
from stepprune.policies import POLICIES
from stepprune.runfolder import (
    BENCH_SCORERS_FILE,
    CONFIG_FILE,
    Run,
    RunFolder,
    RunFolderError,
    append_jsonl,
    read_jsonl,
    threshold_key,
)
from stepprune.runfolder.jsonl import _read_json
from stepprune.schema import Problem, Trace
from stepprune.scorers import SCORERS, Scorer
from stepprune.session import Session
from stepprune.stats import DEFAULT_RESAMPLES, bootstrap_ci

REFERENCE = "ablation"
# The planted benchmark's default list, less the reference itself (its correlation is 1).
DEFAULT_RUN_SCORERS: tuple[str, ...] = tuple(s for s in DEFAULT_SCORERS if s != REFERENCE)
# Used when the run's config.json does not say (the run's own settings are the default: its
# answers need the budget it gave them, e.g. a thinking model's answer section after </think>).
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
DEFAULT_ANSWER_MAX_TOKENS = 512
PRUNING_POLICY = "percentile"
SCORES_KIND, ANSWER_KIND = "scores", "answer"

TraceKey = tuple[str, int]


# -- results ------------------------------------------------------------------------------------


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


@dataclass
class RunScorerResult:
    """One scorer on a run folder: mean Spearman with ablation (over problems, NaN if none has
    a correlation), its 95% interval, recovery per threshold key, and how many problems and
    traces the correlation is over. ``oracle``: the scorer reads the reference answer
    (``reads_gold``) or the answer section of teacher-forced traces (``query=last``), which is
    the reference there; on generated traces that section is the model's own."""

    scorer: str
    spearman: float
    ci95: tuple[float, float]
    recovery: dict[str, float]
    n_problems: int = 0
    n_traces: int = 0
    oracle: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "scorer": self.scorer,
            "oracle": self.oracle,
            # null, not NaN (which is not JSON), when no trace has a correlation.
            "spearman": _finite_or_none(self.spearman),
            "ci95": [_finite_or_none(self.ci95[0]), _finite_or_none(self.ci95[1])],
            "recovery": dict(self.recovery),
            "n_problems": self.n_problems,
            "n_traces": self.n_traces,
        }


@dataclass
class RunBenchResult:
    """The whole benchmark: per scorer results and the random control's recovery."""

    run: str
    model: str
    dataset: str
    scorers: list[RunScorerResult]
    control: str
    control_recovery: dict[str, float]
    n_traces: int
    n_skipped: int = 0
    computed: dict[str, int] = field(default_factory=dict)  # units computed (not cached) now

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "model": self.model,
            "dataset": self.dataset,
            "reference": REFERENCE,
            "n_traces": self.n_traces,
            "n_skipped": self.n_skipped,
            "scorers": [s.to_json() for s in self.scorers],
            "random_control": {"scorer": self.control, "recovery": dict(self.control_recovery)},
        }


# -- the cache ----------------------------------------------------------------------------------


def mask_key(keep: Sequence[bool]) -> str:
    return "".join("1" if k else "0" for k in keep)


class BenchCache:
    """The rows of ``bench_scorers.jsonl``: scores by (trace, scorer spec) and graded answers
    by (trace, keep mask, answer budget). Appending writes the file and the memory copy."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / BENCH_SCORERS_FILE
        self.scores: dict[tuple[str, int, str], list[float]] = {}
        self.answers: dict[tuple[str, int, str, int], bool] = {}
        for number, row in read_jsonl(self.path, repair=True):
            try:
                if row["kind"] == SCORES_KIND:
                    key = (str(row["problem_id"]), int(row["sample"]), str(row["scorer"]))
                    self.scores[key] = [float(x) for x in row["importances"]]
                elif row["kind"] == ANSWER_KIND:
                    pid, sample, keep = str(row["problem_id"]), int(row["sample"]), str(row["keep"])
                    akey = (pid, sample, keep, int(row["answer_max_tokens"]))
                    self.answers[akey] = bool(row["correct"])
            except (KeyError, TypeError, ValueError) as error:
                raise RunFolderError(
                    f"{self.path}: line {number}: not a bench row ({error})"
                ) from None

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append rows (one fsynced write) and remember them."""
        if not rows:
            return
        append_jsonl(self.path, rows)
        for row in rows:
            if row["kind"] == SCORES_KIND:
                key = (row["problem_id"], row["sample"], row["scorer"])
                self.scores[key] = list(row["importances"])
            else:
                akey = (row["problem_id"], row["sample"], row["keep"], row["answer_max_tokens"])
                self.answers[akey] = row["correct"]


# -- the benchmark ------------------------------------------------------------------------------


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    inner = config.get("config")
    return inner if isinstance(inner, dict) else config


def run_model_name(run_dir: Path | str) -> str:
    """The model a run folder was made with (``config.json``), to load for the benchmark."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a run folder: {CONFIG_FILE} is missing")
    model = _settings(_read_json(path)).get("model")
    if not model:
        raise RunFolderError(f"{path}: no model named")
    return str(model)


def _problems(run: Run) -> tuple[list[tuple[Problem, Trace]], int]:
    """Traces with a reference answer (from their records) and at least one step, as
    ``(problem, trace)`` in run order; and how many traces were left out."""
    gold = {r.problem_id: r.gold for r in run.records}
    order = {pid: i for i, pid in enumerate(run.problem_ids)}
    traces = sorted(run.traces, key=lambda t: (order.get(t.problem_id, 0), t.sample))
    items = [
        (Problem(id=t.problem_id, problem=t.problem, answer=gold[t.problem_id]), t)
        for t in traces
        if t.problem_id in gold and t.steps
    ]
    return items, len(traces) - len(items)


def _known_scores(run: Run, trace: Trace, spec: str, cache: BenchCache) -> list[float] | None:
    """Scores already computed: by this benchmark, or by the run itself."""
    key = (trace.problem_id, trace.sample, spec)
    if key in cache.scores:
        return cache.scores[key]
    if trace.scorer == spec and all(s.importance is not None for s in trace.steps):
        return [float(s.importance or 0.0) for s in trace.steps]
    return run.scores.get(key)


def _score_trace(
    session: Session,
    run: Run,
    problem: Problem,
    trace: Trace,
    scorers: Sequence[Scorer],
    cache: BenchCache,
    computed: dict[str, int],
) -> dict[str, list[float]]:
    """Scores of one trace under every scorer; what is missing is computed and appended."""
    scores, rows = {}, []
    for scorer in scorers:
        known = _known_scores(run, trace, scorer.spec, cache)
        if known is None:
            known = list(session.score(trace, problem, scorer=scorer))
            computed[scorer.spec] = computed.get(scorer.spec, 0) + 1
            row = {"problem_id": trace.problem_id, "sample": trace.sample, "scorer": scorer.spec}
            rows.append({"kind": SCORES_KIND, **row, "importances": known})
        if len(known) != len(trace.steps):
            raise ValueError(
                f"scorer {scorer.spec} gave {len(known)} scores for {len(trace.steps)} steps "
                f"of {trace.problem_id}"
            )
        scores[scorer.spec] = known
    cache.append(rows)
    return scores


def _answer_trace(
    session: Session,
    problem: Problem,
    trace: Trace,
    masks: Sequence[tuple[bool, ...]],
    answer_max_tokens: int,
    cache: BenchCache,
    computed: dict[str, int],
) -> None:
    """Answer (text mode) and grade every keep mask of a trace not answered yet; append."""
    pid, sample = trace.problem_id, trace.sample
    known = cache.answers
    missing = list(
        dict.fromkeys(
            m for m in masks if (pid, sample, mask_key(m), answer_max_tokens) not in known
        )
    )
    if not missing:
        return
    mode = TextMode(answer_max_tokens=answer_max_tokens)
    prunings = [Pruning("bench", 0.0, mask) for mask in missing]
    rows = []
    for outcome in mode.evaluate(session, problem, trace, prunings):
        text = session.answer_text(outcome.answer.content_ids)
        grade = session.grade(problem, text)
        rows.append(
            {
                "kind": ANSWER_KIND,
                "problem_id": pid,
                "sample": sample,
                "keep": mask_key(outcome.keep),
                "answer_max_tokens": answer_max_tokens,
                "answer_text": text,
                "prediction": grade.prediction,
                "correct": grade.correct,
            }
        )
    computed["answers"] = computed.get("answers", 0) + len(rows)
    cache.append(rows)


def _recovery(correct: dict[str, list[list[bool]]], spec: str, ts: Sequence[float]) -> dict:
    rows = correct[spec]
    return {threshold_key(t): sum(row[j] for row in rows) / len(rows) for j, t in enumerate(ts)}


def run_scorers_benchmark(
    run_dir: Path | str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    scorer_specs: Sequence[str],
    thresholds: Sequence[float] | None = None,
    answer_max_tokens: int | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    console: Console | None = None,
) -> RunBenchResult:
    """Compare ``scorer_specs`` with the ablation reference on the traces of ``run_dir``.

    Args:
        run_dir: A run folder written by ``stepprune run`` (finished or not: traces with a
            record, which holds the reference answer, are used).
        model, tokenizer: The run's model (see :func:`run_model_name`); scores of another
            model would not be the run's.
        scorer_specs: Scorers to compare (``ablation`` itself may be listed: its correlation
            is 1 by construction).
        thresholds: Pruning thresholds of the percentile policy, each in [0, 1) (None: the
            run's).
        answer_max_tokens: Budget of each re-evaluated answer (None: the run's); part of the
            answer cache key.
        n_resamples, seed: Bootstrap of the Spearman interval; ``seed`` also seeds the random
            control (``random:seed=<seed>``).
        console: Where warnings go.

    Raises:
        RunFolderError: not a run folder, held by a run, or a corrupted cache file.
        SpecError: an unknown scorer or option, before any work is done.
    """
    if not scorer_specs:
        raise ValueError("give at least one scorer spec")
    scorers = [SCORERS.build(spec) for spec in scorer_specs]
    reference, control = SCORERS.build(REFERENCE), SCORERS.build(f"random:seed={seed}")
    folder_path = Path(run_dir)
    config_path = folder_path / CONFIG_FILE
    if not config_path.is_file():
        raise RunFolderError(f"{folder_path} is not a run folder: {CONFIG_FILE} is missing")
    config = _read_json(config_path)
    identity = config.get("identity", {})
    settings = _settings(config)
    if thresholds is None:
        thresholds = settings.get("thresholds") or DEFAULT_THRESHOLDS
    if answer_max_tokens is None:
        answer_max_tokens = int(settings.get("answer_max_tokens") or DEFAULT_ANSWER_MAX_TOKENS)
    if answer_max_tokens < 1:
        raise ValueError(f"answer_max_tokens must be >= 1, got {answer_max_tokens}")
    policy = POLICIES.build(PRUNING_POLICY)
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ValueError("give at least one threshold")
    for t in thresholds:
        policy.keep([1.0], t)  # validates the threshold before the expensive work
    console = console or Console(stderr=True)
    # Opened as the run's own writer would: the same identity, the folder's lock held, torn last
    # lines cut; config.json is not rewritten.
    with RunFolder(folder_path, identity, config, option="--run") as folder:
        run = folder.run()
        cache = BenchCache(folder.out)
        items, skipped = _problems(run)
        if not items:
            raise RunFolderError(f"{folder_path}: no trace with steps and a record to score")
        forced = any(trace.teacher_forced for _, trace in items)
        specs = list(dict.fromkeys([REFERENCE, *(s.spec for s in scorers), control.spec]))
        all_scorers = {s.spec: s for s in [reference, *scorers, control]}
        computed: dict[str, int] = {}
        rho: dict[str, dict[TraceKey, float]] = {s.spec: {} for s in scorers}
        correct: dict[str, list[list[bool]]] = {spec: [] for spec in specs}
        with Grader() as grader:
            session = Session(model, tokenizer, scorer=reference, policy=policy, grader=grader)
            for problem, trace in items:
                scores = _score_trace(
                    session, run, problem, trace, [all_scorers[s] for s in specs], cache, computed
                )
                key = (trace.problem_id, trace.sample)
                for scorer in scorers:
                    rho[scorer.spec][key] = spearman(scores[scorer.spec], scores[REFERENCE])
                masks = {spec: session.keep_masks(scores[spec], thresholds) for spec in specs}
                flat = [m for spec in specs for m in masks[spec]]
                _answer_trace(session, problem, trace, flat, answer_max_tokens, cache, computed)
                for spec in specs:
                    correct[spec].append(
                        [cache.answers[(*key, mask_key(m), answer_max_tokens)] for m in masks[spec]]
                    )

    if skipped:
        console.print(
            f"[yellow]warning:[/yellow] {skipped} traces left out (no steps, or no record "
            "with the reference answer)",
            highlight=False,
        )
    results = []
    for scorer in scorers:
        per_problem = per_problem_mean(rho[scorer.spec])
        values = list(per_problem.values())
        mean = float(np.mean(values)) if values else math.nan
        ci = bootstrap_ci(values, n_resamples, seed) if values else (math.nan, math.nan)
        results.append(
            RunScorerResult(
                scorer=scorer.spec,
                spearman=mean,
                ci95=ci,
                recovery=_recovery(correct, scorer.spec, thresholds),
                n_problems=len(per_problem),
                n_traces=sum(not math.isnan(v) for v in rho[scorer.spec].values()),
                oracle=scorer.oracle_on_teacher_forced if forced else scorer.reads_gold,
            )
        )
    return RunBenchResult(
        run=str(folder_path),
        model=str(settings.get("model", "?")),
        dataset=str(settings.get("dataset", "?")),
        scorers=results,
        control=control.spec,
        control_recovery=_recovery(correct, control.spec, thresholds),
        n_traces=len(items),
        n_skipped=skipped,
        computed=computed,
    )


# -- report -------------------------------------------------------------------------------------


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _label(result: RunScorerResult) -> str:
    return f"`{result.scorer}`" + (" (oracle)" if result.oracle else "")


def run_results_markdown(result: RunBenchResult) -> str:
    """A Markdown table: scorer, Spearman with ablation, 95% CI, recovery at each threshold;
    the random control's recovery as the last row."""
    keys = list(result.control_recovery)
    header = ["Scorer", "Spearman vs ablation", "95% CI"] + [f"recovery @ {k}" for k in keys]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]

    def pct(recovery: dict[str, float]) -> list[str]:
        return [f"{100 * recovery[k]:.0f}%" for k in keys]

    for r in result.scorers:
        ci = f"[{_number(r.ci95[0])}, {_number(r.ci95[1])}]"
        lines.append(
            "| " + " | ".join([_label(r), _number(r.spearman), ci, *pct(r.recovery)]) + " |"
        )
    control = [f"`{result.control}` (control)", "", "", *pct(result.control_recovery)]
    lines.append("| " + " | ".join(control) + " |")
    note = f"{result.n_traces} traces of {result.run} ({result.model}, {result.dataset})"
    if result.n_skipped:
        note += f", {result.n_skipped} left out"
    lines += ["", note + "; Spearman per trace, averaged per problem, CI by resampling problems."]
    return "\n".join(lines) + "\n"
