"""One aggregation of a run's records: the numbers behind every table, JSON file and plot.

    Records -> aggregate_rows() -> Row per (scorer, mode, threshold)
    Traces (+ Records) -> run_figures() -> RunFigures (counts, truncation, original accuracy)
    Rows + RunFigures -> summary_json()  (summary.json, rendered as results.md)
                      -> build_report()  (report.json, rendered as report.md and plots)

Pure computation: no files, no rendering (``stepprune.reporting`` renders). Thresholds are
grouped on ``runfolder.threshold_key``, so ``0.1 * 3`` and ``0.3`` are one row; the random
control is what ``runfolder.is_control`` says (``random-control...``), never a user's own
``random`` scorer, and each scorer is compared only with its own control
(``runfolder.control_owner``: ``of=`` in the control's spec, or the folder's first scorer for
controls written before 0.3). Intervals are percentile bootstraps over problems
(``stepprune.stats``).

Means of nothing are None, never 0: a run without traces has no truncation rate, not a rate of
0%. Rows are built from non-empty groups of records, so their means are always numbers.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stepprune.runfolder import (
    Run,
    control_owner,
    is_control,
    legacy_owner,
    name_control,
    threshold_key,
)
from stepprune.schema import Record, Trace
from stepprune.stats import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    bootstrap_ci,
    paired_delta,
    pass_at_1,
    per_problem_means,
)

Interval = tuple[float, float]


@dataclass(frozen=True)
class Bootstrap:
    """Settings of every interval of one aggregation (one seed, so intervals are reproducible)."""

    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    level: float = DEFAULT_LEVEL

    def ci(self, per_problem: Sequence[float]) -> Interval:
        return bootstrap_ci(per_problem, self.n_resamples, self.seed, self.level)

    def delta(self, a: Mapping[str, float], b: Mapping[str, float]) -> tuple[float, Interval]:
        return paired_delta(a, b, self.n_resamples, self.seed, self.level)


def mean(values: Iterable[float]) -> float | None:
    """Arithmetic mean as a plain float (JSON-serialisable); None for no values."""
    items = [float(v) for v in values]
    return sum(items) / len(items) if items else None


def kept_fraction(record: Record) -> float:
    """Share of the trace's reasoning tokens that ``record`` kept, in [0, 1]."""
    # No reasoning means nothing could be pruned: the convention of Record.steps_kept_pct.
    return record.tokens_kept / record.reasoning_tokens if record.reasoning_tokens else 1.0


@dataclass
class Row:
    """One (scorer, mode, threshold) of one run. Fractions are in [0, 1]; deltas are fractions.

    pass@1 is per problem the mean correctness over its samples, then the mean over problems;
    ``accuracy`` is the plain share of correct records (``correct / records``: the notebook's
    figure, equal to pass@1 when every problem has as many samples). ``delta`` is pass@1 minus
    the reference row's (threshold 0.0 of the same scorer and mode, else its smallest
    threshold), paired over shared problems; None on the reference row itself. ``control_*``
    describe this scorer's own random control at the same mode and threshold (every control
    seed of this scorer pooled) and ``vs_control`` = this row - control, paired; None when the
    scorer has no control there or this row is itself a control. ``control_of`` is, on a
    control's row, the scorer it controls. Token figures are means per record unless named
    ``..._pct`` or ``..._fraction`` of a pooled total (long traces dominate the token cost, so
    they dominate the share too).
    """

    run: str
    scorer: str
    mode: str
    threshold: float  # float(threshold_key(t)): 0.1 * 3 reads 0.3
    problems: int
    records: int
    pass1: float
    pass1_ci: Interval
    reference_threshold: float
    delta: float | None
    delta_ci: Interval | None
    kept_fraction: float  # mean per record of tokens_kept / reasoning_tokens
    steps_kept_fraction: float
    reasoning_tokens: float
    tokens_saved: float
    tokens_saved_fraction: float  # pooled: sum saved / sum reasoning tokens
    is_control: bool
    correct: int
    accuracy: float
    avg_steps_kept_pct: float
    avg_chars_kept: float
    avg_tokens_kept: float
    tokens_kept_pct: float  # pooled, in percent
    avg_answer_tokens: float
    answer_truncation_rate: float
    control_pass1: float | None = None
    control_ci: Interval | None = None
    control_kept_fraction: float | None = None
    vs_control: float | None = None
    vs_control_ci: Interval | None = None
    control_of: str | None = None
    per_problem: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return threshold_key(self.threshold)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


GroupKey = tuple[str, str, float]


def _group_row(label: str, key: GroupKey, records: list[Record], boot: Bootstrap) -> Row:
    """The figures of one non-empty group; deltas and the control are filled in afterwards."""

    def avg(value: Callable[[Record], float]) -> float:
        result = mean(value(r) for r in records)
        assert result is not None  # a group is never empty
        return result

    scorer, mode, threshold = key
    values = pass_at_1(records)
    reasoning = sum(r.reasoning_tokens for r in records)
    kept = sum(r.tokens_kept for r in records)
    correct = sum(1 for r in records if r.correct)
    return Row(
        run=label,
        scorer=scorer,
        mode=mode,
        threshold=threshold,
        problems=len(values),
        records=len(records),
        pass1=sum(values.values()) / len(values),
        pass1_ci=boot.ci(list(values.values())),
        reference_threshold=threshold,
        delta=None,
        delta_ci=None,
        kept_fraction=avg(kept_fraction),
        steps_kept_fraction=avg(lambda r: r.steps_kept_pct / 100.0),
        reasoning_tokens=avg(lambda r: float(r.reasoning_tokens)),
        tokens_saved=avg(lambda r: float(r.reasoning_tokens - r.tokens_kept)),
        tokens_saved_fraction=(reasoning - kept) / reasoning if reasoning else 0.0,
        is_control=is_control(scorer),
        correct=correct,
        accuracy=correct / len(records),
        avg_steps_kept_pct=avg(lambda r: r.steps_kept_pct),
        avg_chars_kept=avg(lambda r: r.chars_kept),
        avg_tokens_kept=avg(lambda r: r.tokens_kept),
        tokens_kept_pct=100.0 * kept / reasoning if reasoning else 100.0,
        avg_answer_tokens=avg(lambda r: r.answer_tokens),
        answer_truncation_rate=avg(lambda r: 1.0 if r.answer_truncated else 0.0),
        per_problem=values,
    )


def aggregate_rows(
    records: Iterable[Record],
    label: str = "",
    bootstrap: Bootstrap | None = None,
    *,
    legacy: str | None = None,
) -> list[Row]:
    """Rows of ``records``: non-control scorers first (in record order), then controls; within
    a scorer, by mode then ascending threshold.

    Args:
        records: Records of one run (any scorers, modes and thresholds; controls included).
        label: The run's label, copied into every row (reports of several runs).
        bootstrap: Interval settings (default: ``stats`` defaults, seed 0).
        legacy: The scorer that controls without ``of=`` belong to (default: the first
            scorer of ``records``, ``runfolder.legacy_owner``).
    """
    boot = bootstrap or Bootstrap()
    records = list(records)
    legacy = legacy or legacy_owner(records)
    specs = {r.scorer for r in records}

    def group_spec(spec: str) -> str:
        # A control written before 0.3 joins the row of its owner's control when the folder
        # also has that row (an old folder resumed with more samples); else it keeps its name.
        if legacy is None or not is_control(spec):
            return spec
        named = name_control(spec, legacy)
        return named if named in specs else spec

    groups: dict[GroupKey, list[Record]] = defaultdict(list)
    for record in records:
        key = (group_spec(record.scorer), record.mode, float(threshold_key(record.threshold)))
        groups[key].append(record)
    rows = {key: _group_row(label, key, group, boot) for key, group in groups.items()}

    # The control of each (scorer, mode, threshold): only that scorer's controls (every seed
    # pooled, so that several seeds average out instead of one being picked arbitrarily).
    pooled: dict[tuple[str, str, float], list[Record]] = defaultdict(list)
    for (spec, mode, threshold), group in groups.items():
        owner = control_owner(spec, legacy)
        if owner is not None:
            pooled[(owner, mode, threshold)].extend(group)
            rows[(spec, mode, threshold)].control_of = owner

    for (scorer, mode, threshold), row in rows.items():
        own = sorted(t for s, m, t in rows if (s, m) == (scorer, mode))
        row.reference_threshold = 0.0 if 0.0 in own else own[0]
        if threshold != row.reference_threshold:
            reference = rows[(scorer, mode, row.reference_threshold)]
            # No shared problem means no paired difference to report: leave it None.
            with contextlib.suppress(ValueError):
                row.delta, row.delta_ci = boot.delta(row.per_problem, reference.per_problem)
        control = pooled.get((scorer, mode, threshold))
        if control and not row.is_control:
            values = pass_at_1(control)
            row.control_pass1 = sum(values.values()) / len(values)
            row.control_ci = boot.ci(list(values.values()))
            row.control_kept_fraction = mean(kept_fraction(r) for r in control)
            with contextlib.suppress(ValueError):
                row.vs_control, row.vs_control_ci = boot.delta(row.per_problem, values)

    order = list(dict.fromkeys(group_spec(r.scorer) for r in records))
    return [
        rows[key]
        for key in sorted(rows, key=lambda k: (is_control(k[0]), order.index(k[0]), k[1], k[2]))
    ]


@dataclass
class RunFigures:
    """Run-level figures, from traces (and records for the counts).

    Problems and samples are counted over traces and records together, so that records alone
    (or traces never re-evaluated) still count what they have. Trace figures are None without
    traces. ``original_accuracy`` is the share of graded original answers that are correct (the
    notebook's figure); ``original_pass1`` the same per problem then over problems, with its
    interval.
    """

    num_problems: int
    samples: int
    num_traces: int
    num_records: int
    truncation_rate: float | None
    original_accuracy: float | None
    original_pass1: float | None
    original_pass1_ci: Interval | None
    avg_reasoning_tokens: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_figures(
    traces: Sequence[Trace], records: Sequence[Record], bootstrap: Bootstrap | None = None
) -> RunFigures:
    """Counts, truncation rate, original answers' accuracy and mean reasoning length."""
    boot = bootstrap or Bootstrap()
    problems = {t.problem_id for t in traces} | {r.problem_id for r in records}
    samples = [t.sample for t in traces] + [r.sample for r in records]
    graded = [t for t in traces if t.original_correct is not None]
    original = per_problem_means((t.problem_id, 1.0 if t.original_correct else 0.0) for t in graded)
    return RunFigures(
        num_problems=len(problems),
        samples=max(samples) + 1 if samples else 0,
        num_traces=len(traces),
        num_records=len(records),
        truncation_rate=mean(1.0 if t.truncated else 0.0 for t in traces),
        original_accuracy=mean(1.0 if t.original_correct else 0.0 for t in graded),
        original_pass1=mean(original.values()),
        original_pass1_ci=boot.ci(list(original.values())) if original else None,
        avg_reasoning_tokens=mean(t.reasoning_end - t.reasoning_start for t in traces),
    )


# -- summary.json --------------------------------------------------------------------------------


def _threshold_entry(row: Row) -> dict[str, Any]:
    """The notebook's per-threshold keys, then pass@1 and its interval."""
    return {
        "accuracy": row.accuracy,
        "correct": row.correct,
        "total": row.records,
        "avg_steps_kept_pct": row.avg_steps_kept_pct,
        "avg_output_length": row.avg_chars_kept,
        "avg_tokens_kept": row.avg_tokens_kept,
        "avg_tokens_kept_pct": row.tokens_kept_pct,
        "avg_answer_tokens": row.avg_answer_tokens,
        "answer_truncation_rate": row.answer_truncation_rate,
        "pass1": row.pass1,
        "pass1_ci": list(row.pass1_ci),
    }


def summary_json(
    records: Iterable[Record],
    traces: Sequence[Trace],
    *,
    model: str,
    dataset: str,
    scorer: str,
    control: str | None,
    policy: str,
    mode: str,
    bootstrap: Bootstrap | None = None,
) -> dict[str, Any]:
    """The contents of ``summary.json`` for the records of ``scorer`` (and ``control``).

    Keeps the original notebook's keys (``model``, ``dataset``, ``num_problems``, ``samples``,
    ``num_traces``, ``truncation_rate``, ``original_accuracy``, ``avg_reasoning_tokens``,
    ``thresholds.{key}.accuracy/correct/total/avg_steps_kept_pct/avg_output_length/...``),
    ``random_control`` (the control's own per-threshold figures, with its ``scorer``) when
    ``control`` is given, and ``scorer``, ``policy``, ``mode``. Each threshold also has
    ``pass1`` with ``pass1_ci`` ([low, high]) and the control at that threshold:
    ``random_control_pass1`` / ``random_control_pass1_ci`` and the paired difference
    ``vs_random`` / ``vs_random_ci`` (None where there is no control).

    ``records`` may hold other scorers and their controls: only ``scorer`` and its own
    ``control`` are read (``control`` as ``runfolder.control_spec`` names it; a spec without
    ``of=`` means that control of ``scorer``, and matches records without ``of=`` when
    ``scorer`` is the folder's first scorer). ``traces`` are the units summarised (for the
    run-level figures). Thresholds are sorted ascending.
    """
    records = list(records)
    legacy = legacy_owner(records)

    wanted = name_control(control, scorer) if control else None
    records = [
        r
        for r in records
        if r.scorer == scorer
        or (
            wanted is not None
            and is_control(r.scorer)
            and name_control(r.scorer, legacy or "") == wanted
        )
    ]
    rows = aggregate_rows(records, bootstrap=bootstrap, legacy=legacy)
    figures = run_figures(traces, records, bootstrap)

    def by_key(spec: str | None) -> dict[str, Row]:
        # One folder holds one mode; should it hold several, the run's own mode wins.
        own = [r for r in rows if (r.control_of == scorer if spec is None else r.scorer == spec)]
        chosen: dict[str, Row] = {}
        for row in sorted(own, key=lambda r: r.mode == mode):
            chosen[row.key] = row
        return dict(sorted(chosen.items(), key=lambda item: float(item[0])))

    thresholds = {
        key: {
            **_threshold_entry(row),
            "random_control_pass1": row.control_pass1,
            "random_control_pass1_ci": list(row.control_ci) if row.control_ci else None,
            "vs_random": row.vs_control,
            "vs_random_ci": list(row.vs_control_ci) if row.vs_control_ci else None,
        }
        for key, row in by_key(scorer).items()
    }
    summary: dict[str, Any] = {
        "model": model,
        "dataset": dataset,
        "num_problems": figures.num_problems,
        "samples": figures.samples,
        "num_traces": figures.num_traces,
        "truncation_rate": figures.truncation_rate,
        "original_accuracy": figures.original_accuracy,
        "avg_reasoning_tokens": figures.avg_reasoning_tokens,
        "thresholds": thresholds,
    }
    if control is not None:
        control_rows = {key: _threshold_entry(row) for key, row in by_key(None).items()}
        summary["random_control"] = {"scorer": control, **control_rows}
    summary.update(scorer=scorer, policy=policy, mode=mode)
    return summary


# -- report.json ---------------------------------------------------------------------------------


def _short_model(model: str) -> str:
    """``deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B`` -> ``DeepSeek-R1-Distill-Qwen-1.5B``."""
    return Path(model.rstrip("/")).name.removesuffix(".gguf") or model


def run_labels(runs: Sequence[Run]) -> list[str]:
    """Labels that tell runs apart: model, scorer and mode from their configs.

    The dataset is added when runs differ in it, and the folder name when labels still collide
    (e.g. two seeds of the same setting), so that no two runs share a legend entry.
    """
    # The scorer as the user gave it (config), which is shorter than the records' full spec.
    parts = [
        [_short_model(r.model), str(r.settings.get("scorer") or r.scorer), r.mode] for r in runs
    ]
    if len({r.dataset for r in runs}) > 1:
        for run, part in zip(runs, parts, strict=True):
            part.insert(1, Path(run.dataset).stem or run.dataset)
    labels = [" · ".join(p) for p in parts]
    return [
        f"{text} ({run.path.name})" if labels.count(text) > 1 else text
        for text, run in zip(labels, runs, strict=True)
    ]


def build_report(runs: Sequence[Run], bootstrap: Bootstrap | None = None) -> dict[str, Any]:
    """The report of one or more runs as a JSON-serialisable dict (``report.json``).

    ``statistics`` states how intervals were computed; ``runs`` holds per run its label, path,
    model, dataset, scorer, mode, whether it finished, the :class:`RunFigures` and ``rows``
    (each a :class:`Row` as a dict), all computed from records and traces (summary.json is not
    read: an interrupted run lacks it).
    """
    boot = bootstrap or Bootstrap()
    entries = []
    for run, label in zip(runs, run_labels(runs), strict=True):
        entry: dict[str, Any] = {
            "label": label,
            "path": str(run.path),
            "model": run.model,
            "dataset": run.dataset,
            "scorer": run.scorer,
            "mode": run.mode,
            "finished": run.summary is not None,
            **run_figures(run.traces, run.records, boot).to_json(),
        }
        entry["rows"] = [row.to_json() for row in aggregate_rows(run.records, label, boot)]
        entries.append(entry)
    return {
        "statistics": {
            "ci": f"{boot.level:.0%} percentile bootstrap over problems",
            "n_resamples": boot.n_resamples,
            "seed": boot.seed,
            "level": boot.level,
            "pass1": "per problem, the mean correctness over its samples; then the mean over "
            "problems",
        },
        "runs": entries,
    }
