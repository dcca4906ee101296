"""Run-level figures and report.json, built from the rows (summary.json: ``aggregate.summary``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stepprune.aggregate.rows import Bootstrap, Interval, aggregate_rows, mean
from stepprune.runfolder import Run
from stepprune.schema import Record, Trace
from stepprune.stats import per_problem_means


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
