"""Run-level figures, summary.json and report.json, built from the rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stepprune.aggregate.rows import (
    Bootstrap,
    Interval,
    Row,
    aggregate_rows,
    mean,
)
from stepprune.runfolder import (
    Run,
    is_control,
    legacy_owner,
    name_control,
)
from stepprune.schema import Record, Trace
from stepprune.stats import (
    per_problem_means,
)


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
