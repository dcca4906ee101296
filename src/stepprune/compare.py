"""Reports over one or more run folders: tables with confidence intervals, JSON and plots.

    run folders -> load_run() -> run_table() rows -> build_report() (report.json)
                                                  -> report_markdown() (report.md)
                                                  -> print_report() (terminal)
                                                  -> plot_accuracy_vs_kept(), plot_tokens_saved()

One row per (scorer, mode, threshold) of each run: pass@1 with a 95% bootstrap interval over
problems, the paired difference against threshold 0.0 of the same scorer and mode, the kept
fraction of reasoning tokens and the tokens saved. When a run also holds records of a random
control (scorer ``random...``) at the same threshold, every other scorer's row shows it beside,
with the paired difference scorer - random: the question is whether attention beats random.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich import box
from rich.console import Console
from rich.table import Table

from stepprune.report import format_threshold, plot_importance
from stepprune.runs import Run, is_control, load_run
from stepprune.schema import Record
from stepprune.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, bootstrap_ci, paired_delta, pass_at_1

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
ACCURACY_PNG = "accuracy_vs_kept.png"
TOKENS_PNG = "tokens_saved.png"
IMPORTANCE_DIR = "importance"
DEFAULT_MAX_IMPORTANCE_PLOTS = 10


@dataclass
class Row:
    """One (scorer, mode, threshold) of one run. Fractions are in [0, 1]; deltas are fractions.

    ``delta`` is this row's pass@1 minus the reference row's (threshold 0.0 of the same scorer
    and mode, else its smallest threshold), paired over shared problems; None on the reference
    row itself. ``control_*`` describe the random control at the same mode and threshold (all
    ``random...`` scorers pooled) and ``vs_control`` = this row - control; None when the run has
    no control or this row is itself a control.
    """

    run: str
    scorer: str
    mode: str
    threshold: float
    problems: int
    records: int
    pass1: float
    pass1_ci: tuple[float, float]
    reference_threshold: float
    delta: float | None
    delta_ci: tuple[float, float] | None
    kept_fraction: float
    steps_kept_fraction: float
    reasoning_tokens: float
    tokens_saved: float
    tokens_saved_fraction: float
    is_control: bool
    control_pass1: float | None = None
    control_ci: tuple[float, float] | None = None
    control_kept_fraction: float | None = None
    vs_control: float | None = None
    vs_control_ci: tuple[float, float] | None = None
    per_problem: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _kept_fraction(record: Record) -> float:
    # No reasoning means nothing could be pruned: the convention of Record.steps_kept_pct.
    return record.tokens_kept / record.reasoning_tokens if record.reasoning_tokens else 1.0


def _threshold_value(threshold: float) -> float:
    """Thresholds grouped on their report key, so 0.1 * 3 and 0.3 share a row."""
    return float(format_threshold(threshold))


def run_table(
    run: Run,
    label: str | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> list[Row]:
    """The rows of one run: non-control scorers first (in record order), then controls; within a
    scorer, by mode then ascending threshold."""
    label = label or run_labels([run])[0]
    groups: dict[tuple[str, str, float], list[Record]] = defaultdict(list)
    for record in run.records:
        groups[(record.scorer, record.mode, _threshold_value(record.threshold))].append(record)
    ci_args = {"n_resamples": n_resamples, "seed": seed, "level": level}
    per_problem = {key: pass_at_1(records) for key, records in groups.items()}

    # The control of each (mode, threshold): every random scorer's records pooled, so that
    # several control seeds average out instead of one being picked arbitrarily.
    control_records: dict[tuple[str, float], list[Record]] = defaultdict(list)
    for (scorer, mode, threshold), records in groups.items():
        if is_control(scorer):
            control_records[(mode, threshold)].extend(records)
    controls = {key: pass_at_1(records) for key, records in control_records.items()}

    scorer_order = list(dict.fromkeys(r.scorer for r in run.records))
    order = sorted(
        groups, key=lambda key: (is_control(key[0]), scorer_order.index(key[0]), key[1], key[2])
    )

    rows = []
    for key in order:
        scorer, mode, threshold = key
        records = groups[key]
        values = per_problem[key]
        own = sorted(t for s, m, t in groups if s == scorer and m == mode)
        reference = 0.0 if 0.0 in own else own[0]
        delta: float | None = None
        delta_ci: tuple[float, float] | None = None
        if threshold != reference:
            # No shared problem means no paired difference to report: leave it None.
            with contextlib.suppress(ValueError):
                delta, delta_ci = paired_delta(
                    values, per_problem[(scorer, mode, reference)], **ci_args
                )
        reasoning = sum(r.reasoning_tokens for r in records)
        saved = [r.reasoning_tokens - r.tokens_kept for r in records]
        row = Row(
            run=label,
            scorer=scorer,
            mode=mode,
            threshold=threshold,
            problems=len(values),
            records=len(records),
            pass1=_mean(list(values.values())),
            pass1_ci=bootstrap_ci(list(values.values()), **ci_args),
            reference_threshold=reference,
            delta=delta,
            delta_ci=delta_ci,
            kept_fraction=_mean([_kept_fraction(r) for r in records]),
            steps_kept_fraction=_mean([r.steps_kept_pct / 100.0 for r in records]),
            reasoning_tokens=_mean([float(r.reasoning_tokens) for r in records]),
            tokens_saved=_mean([float(s) for s in saved]),
            # Pooled, as in report.summarize: long traces dominate the cost, so the share too.
            tokens_saved_fraction=sum(saved) / reasoning if reasoning else 0.0,
            is_control=is_control(scorer),
            per_problem=values,
        )
        control = controls.get((mode, threshold))
        if control and not row.is_control:
            row.control_pass1 = _mean(list(control.values()))
            row.control_ci = bootstrap_ci(list(control.values()), **ci_args)
            row.control_kept_fraction = _mean(
                [_kept_fraction(r) for r in control_records[(mode, threshold)]]
            )
            with contextlib.suppress(ValueError):
                row.vs_control, row.vs_control_ci = paired_delta(values, control, **ci_args)
        rows.append(row)
    return rows


def _short_model(model: str) -> str:
    """``deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B`` -> ``DeepSeek-R1-Distill-Qwen-1.5B``."""
    return Path(model.rstrip("/")).name.removesuffix(".gguf") or model


def run_labels(runs: Sequence[Run]) -> list[str]:
    """Labels that tell runs apart: model, scorer and mode from their configs.

    The dataset is added when runs differ in it, and the folder name when labels still collide
    (e.g. two seeds of the same setting), so that no two runs share a legend entry.
    """
    parts = [[_short_model(r.model), r.scorer, r.mode] for r in runs]
    if len({r.dataset for r in runs}) > 1:
        for run, part in zip(runs, parts, strict=True):
            part.insert(1, Path(run.dataset).stem or run.dataset)
    labels = [" · ".join(p) for p in parts]
    counts = defaultdict(int)
    for text in labels:
        counts[text] += 1
    return [
        f"{text} ({run.path.name})" if counts[text] > 1 else text
        for text, run in zip(labels, runs, strict=True)
    ]


def _run_overview(run: Run, label: str, seed: int, n_resamples: int, level: float) -> dict:
    """Run-level figures computed from traces (not summary.json, which an interrupted run
    lacks)."""
    traces = run.traces
    graded = [t for t in traces if t.original_correct is not None]
    original: dict[str, list[float]] = defaultdict(list)
    for t in graded:
        original[t.problem_id].append(1.0 if t.original_correct else 0.0)
    original_pass = [_mean(v) for v in original.values()]
    return {
        "label": label,
        "path": str(run.path),
        "model": run.model,
        "dataset": run.dataset,
        "scorer": run.scorer,
        "mode": run.mode,
        "samples": max([t.sample for t in traces], default=-1) + 1,
        "num_problems": len(run.problem_ids),
        "num_traces": len(traces),
        "num_records": len(run.records),
        "finished": run.summary is not None,
        "truncation_rate": _mean([1.0 if t.truncated else 0.0 for t in traces]) if traces else None,
        "avg_reasoning_tokens": _mean([float(t.reasoning_end - t.reasoning_start) for t in traces])
        if traces
        else None,
        "original_pass1": _mean(original_pass) if original_pass else None,
        "original_pass1_ci": bootstrap_ci(original_pass, n_resamples, seed, level)
        if original_pass
        else None,
    }


def build_report(
    runs: Sequence[Run],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, Any]:
    """The report as a JSON-serialisable dict (``report.json``): settings, runs, rows."""
    labels = run_labels(runs)
    entries = []
    for run, label in zip(runs, labels, strict=True):
        overview = _run_overview(run, label, seed, n_resamples, level)
        rows = run_table(run, label, n_resamples=n_resamples, seed=seed, level=level)
        overview["rows"] = [row.to_json() for row in rows]
        entries.append(overview)
    return {
        "statistics": {
            "ci": f"{level:.0%} percentile bootstrap over problems",
            "n_resamples": n_resamples,
            "seed": seed,
            "level": level,
            "pass1": "per problem, the mean correctness over its samples; then the mean over "
            "problems",
        },
        "runs": entries,
    }


# -- formatting ------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}%"


def _interval(ci: Sequence[float] | None, signed: bool = False) -> str:
    if ci is None:
        return ""
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"[{fmt.format(100.0 * ci[0])}, {fmt.format(100.0 * ci[1])}]"


def _with_ci(value: float | None, ci: Sequence[float] | None) -> str:
    return "n/a" if value is None else f"{_pct(value)} {_interval(ci)}"


def _delta_cell(value: float | None, ci: Sequence[float] | None, empty: str) -> str:
    if value is None:
        return empty
    return f"{100.0 * value:+.1f} pts {_interval(ci, signed=True)}"


def _table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cells shared by the Markdown and terminal tables."""
    runs = report["runs"]
    rows = [row for run in runs for row in run["rows"]]
    with_run = len(runs) > 1
    with_control = any(row["control_pass1"] is not None for row in rows)
    level = f"{report['statistics']['level']:.0%}"
    header = ["Run"] if with_run else []
    header += ["Scorer", "Mode", "Threshold", "Problems", f"pass@1 [{level} CI]"]
    header += [f"Δ vs base [{level} CI]", "Kept tokens", "Tokens saved / trace"]
    if with_control:
        header += [f"Random pass@1 [{level} CI]", "Random kept", f"Δ vs random [{level} CI]"]
    cells = []
    for row in rows:
        line = [row["run"]] if with_run else []
        line += [
            row["scorer"],
            row["mode"],
            format_threshold(row["threshold"]),
            str(row["problems"]),
            _with_ci(row["pass1"], row["pass1_ci"]),
            _delta_cell(row["delta"], row["delta_ci"], "base"),
            _pct(row["kept_fraction"]),
            f"{row['tokens_saved']:.0f} ({_pct(row['tokens_saved_fraction'])})",
        ]
        if with_control:
            has = row["control_pass1"] is not None
            line += [
                _with_ci(row["control_pass1"], row["control_ci"]) if has else "",
                _pct(row["control_kept_fraction"]) if has else "",
                _delta_cell(row["vs_control"], row["vs_control_ci"], ""),
            ]
        cells.append(line)
    return header, cells


def _overview_line(run: dict[str, Any]) -> str:
    original = _with_ci(run["original_pass1"], run["original_pass1_ci"])
    status = "" if run["finished"] else " (unfinished run: figures cover the records so far)"
    return (
        f"{run['label']}: {run['model']} on {run['dataset']}, {run['num_problems']} problems x "
        f"{run['samples']} samples, {run['num_traces']} traces, truncation rate "
        f"{_pct(run['truncation_rate'])}, original answers' pass@1 {original}{status}"
    )


EXPLANATION = (
    "pass@1 is, per problem, the share of its samples answered correctly after pruning, averaged "
    "over problems; the interval is a percentile bootstrap over problems. Δ vs base is the paired "
    "difference against threshold 0.0 of the same scorer and mode (or its smallest threshold), in "
    "percentage points, over the problems both have. Kept tokens is the mean share of reasoning "
    "tokens kept per trace; tokens saved is the mean number of reasoning tokens removed per trace "
    "(share of all reasoning tokens). Random columns show the random-pruning control at the same "
    "threshold, and Δ vs random the paired difference scorer - random: an interval above 0 means "
    "the scorer keeps the steps that matter better than chance. The original answers are graded "
    "separately from the threshold 0.0 row."
)


def report_markdown(report: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """The report as Markdown: overview lines, the table, explanations, and links to plots."""
    header, cells = _table(report)
    lines = ["# stepprune report", ""]
    lines += [f"- {_overview_line(run)}" for run in report["runs"]]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    # A "|" inside a cell (scorer specs never have one, labels might) would split the column.
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
    lines += ["", EXPLANATION, ""]
    for plot in plots:
        lines += [f"![{Path(plot).stem.replace('_', ' ')}]({plot})", ""]
    importance = [
        (run["label"], p) for run in report["runs"] for p in run.get("importance_plots", [])
    ]
    if importance:
        lines += ["## Step importance per trace", ""]
        lines += [f"- {label}: [{Path(p).stem}]({p})" for label, p in importance]
        lines.append("")
    return "\n".join(lines)


def _compact(value: float | None, ci: Sequence[float] | None, signed: bool = False) -> str:
    """A percentage (or signed points) over its interval in whole points, on two short lines
    for a terminal."""
    if value is None:
        return ""
    top = f"{100.0 * value:+.1f}" if signed else _pct(value)
    if ci is None:
        return top
    fmt = "{:+.0f}" if signed else "{:.0f}"
    return f"{top}\n{fmt.format(100.0 * ci[0])}–{fmt.format(100.0 * ci[1])}"


def print_report(report: dict[str, Any], console: Console) -> None:
    """The report on a rich console, compact enough for 80 columns: one table per run x scorer
    x mode (the title names them), each value over its interval, and one overview line per run.
    Report.md has the same numbers with full headers."""
    level = f"{report['statistics']['level']:.0%}"
    with_run = len(report["runs"]) > 1
    for run in report["runs"]:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in run["rows"]:
            groups.setdefault((row["scorer"], row["mode"]), []).append(row)
        for (scorer, mode), rows in groups.items():
            title = " · ".join([run["label"]] * with_run + [scorer, mode])
            table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
            names = ["t", "n", "pass@1", "Δ base", "kept", "saved"]
            with_control = any(row["control_pass1"] is not None for row in rows)
            if with_control:
                names += ["random", "r.kept", "Δ random"]
            for name in names:
                table.add_column(name, justify="right")
            for row in rows:
                cells = [
                    format_threshold(row["threshold"]),
                    str(row["problems"]),
                    _compact(row["pass1"], row["pass1_ci"]),
                    _compact(row["delta"], row["delta_ci"], signed=True) or "base",
                    _pct(row["kept_fraction"]),
                    f"{row['tokens_saved']:.0f}\n{_pct(row['tokens_saved_fraction'])}",
                ]
                if with_control:
                    cells += [
                        _compact(row["control_pass1"], row["control_ci"]),
                        _pct(row["control_kept_fraction"]) if row["control_pass1"] else "",
                        _compact(row["vs_control"], row["vs_control_ci"], signed=True),
                    ]
                table.add_row(*cells, end_section=True)
            console.print(table)
    console.print(
        f"pass@1 and differences (points) with {level} bootstrap intervals over problems; "
        "kept = share of reasoning tokens kept, saved = tokens removed per trace; random = the "
        "random-pruning control at the same threshold.",
        highlight=False,
    )
    for run in report["runs"]:
        console.print(_overview_line(run), highlight=False)


# -- plots -----------------------------------------------------------------------------------


def _series(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One plotted line per (run, scorer, mode), with the run's colour index."""
    series: dict[tuple[str, str, str], dict[str, Any]] = {}
    for colour, run in enumerate(report["runs"]):
        scorers = {(row["scorer"], row["mode"]) for row in run["rows"]}
        for row in run["rows"]:
            key = (run["label"], row["scorer"], row["mode"])
            if key not in series:
                name = run["label"]
                if len(scorers) > 1:  # several scorers (or a control) in one run: name each
                    name += f" · {row['scorer']}"
                series[key] = {
                    "name": name,
                    "colour": colour,
                    "control": row["is_control"],
                    "rows": [],
                }
            series[key]["rows"].append(row)
    return list(series.values())


def _colour(index: int) -> str:
    return f"C{index % 10}"


def accuracy_figure(report: dict[str, Any]) -> Figure:
    """pass@1 against the kept fraction of reasoning tokens, with CI bands; controls dashed."""
    fig = Figure(figsize=(8.0, 5.0))
    FigureCanvasAgg(fig)  # object API with an Agg canvas: no pyplot state, no display needed
    ax = fig.add_subplot()
    for line in _series(report):
        rows = sorted(line["rows"], key=lambda row: row["kept_fraction"])
        xs = [row["kept_fraction"] for row in rows]
        colour = _colour(line["colour"])
        style = "--" if line["control"] else "-"
        ax.plot(xs, [r["pass1"] for r in rows], style, marker="o", color=colour, label=line["name"])
        ax.fill_between(
            xs,
            [r["pass1_ci"][0] for r in rows],
            [r["pass1_ci"][1] for r in rows],
            color=colour,
            alpha=0.08 if line["control"] else 0.18,
            linewidth=0,
        )
        if not line["control"]:
            for row in rows:  # which threshold each point is: the x axis alone does not say
                ax.annotate(
                    f"t={format_threshold(row['threshold'])}",
                    (row["kept_fraction"], row["pass1"]),
                    textcoords="offset points",
                    xytext=(3, 4),
                    fontsize=7,
                    color=colour,
                )
    level = f"{report['statistics']['level']:.0%}"
    ax.set_title(f"Accuracy vs kept reasoning tokens ({level} bootstrap CI over problems)")
    ax.set_xlabel("kept fraction of reasoning tokens (mean per trace)")
    ax.set_ylabel("pass@1")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(right=1.02)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        # Below the axes: legend entries are long (model · scorer · mode) and would hide points.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, ncol=1)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_kept(report: dict[str, Any], path: Path) -> None:
    """Write :func:`accuracy_figure` to ``path`` (format from the suffix)."""
    accuracy_figure(report).savefig(path)


def tokens_saved_figure(report: dict[str, Any]) -> Figure:
    """Mean reasoning tokens removed per trace at each threshold: grouped bars, one per line."""
    series = _series(report)
    thresholds = sorted({row["threshold"] for line in series for row in line["rows"]})
    fig = Figure(figsize=(max(6.0, 1.2 * len(thresholds) + 3.0), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    for i, line in enumerate(series):
        by_threshold = {row["threshold"]: row for row in line["rows"]}
        xs = [j + (i - (len(series) - 1) / 2) * width for j, t in enumerate(thresholds)]
        # NaN draws no bar: a threshold a run was not evaluated at is not "0 tokens saved".
        ys = [
            by_threshold[t]["tokens_saved"] if t in by_threshold else math.nan for t in thresholds
        ]
        ax.bar(
            xs,
            ys,
            width=width,
            color=_colour(line["colour"]),
            alpha=0.5 if line["control"] else 0.9,
            hatch="//" if line["control"] else None,
            label=line["name"],
        )
    ax.set_xticks(range(len(thresholds)), [format_threshold(t) for t in thresholds])
    ax.set_xlabel("pruning threshold (percentile of step importance)")
    ax.set_ylabel("reasoning tokens removed per trace (mean)")
    ax.set_title("Tokens saved per threshold")
    ax.grid(axis="y", alpha=0.3)
    if series:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8)
    fig.tight_layout()
    return fig


def plot_tokens_saved(report: dict[str, Any], path: Path) -> None:
    """Write :func:`tokens_saved_figure` to ``path`` (format from the suffix)."""
    tokens_saved_figure(report).savefig(path)


def _slug(text: str) -> str:
    """A file-name-safe form of a label or problem id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def plot_importances(run: Run, label: str, folder: Path, limit: int) -> list[Path]:
    """Step-importance bars of the first ``limit`` traces of sample 0 (then other samples)."""
    traces = sorted(run.traces, key=lambda t: t.sample != 0)[:limit]
    paths = []
    for trace in traces:
        path = folder / f"{_slug(trace.problem_id)}_s{trace.sample}.png"
        title = f"{trace.problem_id} (sample {trace.sample}): {label}"
        plot_importance(trace, path, title=title)
        paths.append(path)
    return paths


def default_report_dir(run_dirs: Sequence[Path]) -> Path:
    """Where ``stepprune report`` writes without ``--out``: ``RUN_DIR/report`` for one run, the
    first run's parent ``/report`` for several (``runs/a runs/b`` -> ``runs/report``)."""
    first = Path(run_dirs[0])
    return first / "report" if len(run_dirs) == 1 else first.parent / "report"


def write_report(
    run_dirs: Sequence[Path],
    out_dir: Path,
    console: Console | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    max_importance_plots: int = DEFAULT_MAX_IMPORTANCE_PLOTS,
) -> dict[str, Any]:
    """Read run folders and write ``report.md``, ``report.json`` and the plots to ``out_dir``.

    Args:
        run_dirs: One or more run folders written by ``stepprune run``; several are compared
            side by side (one table, one line per run and scorer in the plots).
        out_dir: Created if needed; files in it are overwritten.
        console: Where to print the table and the list of files; None prints nothing.
        max_importance_plots: Step-importance plots per run (``importance/<run>/...png``).

    Returns:
        The report dict (the contents of ``report.json``) with ``files``: the paths written.

    Raises:
        RunFolderError: a folder is not a run folder (the message names the missing file).
        ValueError: no run folders given.
    """
    if not run_dirs:
        raise ValueError("give at least one run folder")
    runs = [load_run(Path(d)) for d in run_dirs]
    report = build_report(runs, n_resamples=n_resamples, seed=seed, level=level)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    files = [out_dir / ACCURACY_PNG, out_dir / TOKENS_PNG]
    plot_accuracy_vs_kept(report, files[0])
    plot_tokens_saved(report, files[1])
    for run, entry in zip(runs, report["runs"], strict=True):
        folder = out_dir / IMPORTANCE_DIR / _slug(entry["label"])
        folder.mkdir(parents=True, exist_ok=True)
        entry["importance_plots"] = [
            str(p.relative_to(out_dir))
            for p in plot_importances(run, entry["label"], folder, max_importance_plots)
        ]
    (out_dir / REPORT_MD).write_text(
        report_markdown(report, plots=[ACCURACY_PNG, TOKENS_PNG]), encoding="utf-8"
    )
    files += [out_dir / REPORT_MD, out_dir / REPORT_JSON]
    report["files"] = [str(f) for f in files]
    (out_dir / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if console is not None:
        print_report(report, console)
        console.print(
            f"report written to {out_dir}/: {', '.join(f.name for f in files)}",
            highlight=False,
            soft_wrap=True,
        )
    return report
