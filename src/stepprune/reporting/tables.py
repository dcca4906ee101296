"""Tables: Markdown and terminal (rich) renderings of the aggregation. Rendering only.

    Summary (summary.json)    -> results_markdown() (results.md) / print_summary_table()
    report dict (report.json) -> report_markdown()  (report.md)  / print_report()

Both come from ``stepprune.aggregate`` (or their JSON files read back: ``Summary.from_json``);
nothing here computes a statistic. Percentages are fractions x 100 with one decimal; deltas are
in points. Scorers and controls are named as ``reporting.labels`` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from stepprune.aggregate import Summary, SummaryRow
from stepprune.reporting.labels import row_label
from stepprune.runfolder import threshold_key
from stepprune.stats import DEFAULT_LEVEL

TABLE_HEADER = ("Threshold", "Accuracy", "Steps Kept", "Avg Length", "Tokens Kept", "Notes")
BASELINE_NOTE = "baseline (same path as every threshold)"
REFERENCE_NOTE = "reference for deltas (no 0.0 threshold)"
LEVEL = f"{DEFAULT_LEVEL:.0%}"  # summary.json's intervals use the stats defaults


def _pct(value: float | None) -> str:
    """A fraction in [0, 1] as "xx.x%"; "n/a" when undefined."""
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


def _markdown_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    # A "|" inside a cell (scorer specs never have one, labels might) would split the column.
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]


# -- results.md and the table at the end of `stepprune run` --------------------------------------


def _notes(row: SummaryRow, reference: SummaryRow) -> str:
    """Deltas of ``row`` against the reference row (the 0.0 row, else the smallest threshold)."""
    if row.threshold == 0.0:
        return BASELINE_NOTE
    if row is reference:
        return REFERENCE_NOTE
    parts = [f"{100.0 * (row.accuracy - reference.accuracy):+.1f} pts acc"]
    # Tokens as a relative change: "-41.2% tokens" means 41.2% fewer reasoning tokens kept.
    if reference.avg_tokens_kept and row.avg_tokens_kept is not None:
        change = 100.0 * (row.avg_tokens_kept - reference.avg_tokens_kept)
        parts.append(f"{change / reference.avg_tokens_kept:+.1f}% tokens")
    else:
        parts.append("n/a tokens")
    return ", ".join(parts)


def _number(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _summary_cells(summary: Summary) -> list[tuple[str, ...]]:
    """The cells of the results table, one tuple per threshold, shared by Markdown and rich."""
    reference = summary.reference_row
    if reference is None:
        return []
    return [
        (
            row.key,
            f"{_pct(row.accuracy)} ({row.correct}/{row.records})",
            f"{row.avg_steps_kept_pct:.1f}%",
            f"{row.avg_chars_kept:.0f}",
            f"{_number(row.avg_tokens_kept, '.0f')} ({_number(row.tokens_kept_pct, '.1f')}%)",
            _notes(row, reference),
        )
        for row in summary.rows
    ]


def _pass1_rows(summary: Summary) -> list[SummaryRow]:
    """The rows with pass@1 (a summary.json written before pass@1 existed has none)."""
    return [row for row in summary.rows if row.pass1 is not None]


def _pass1_cells(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the pass@1 table: pass@1 and, with a control, the control's pass@1
    and the paired difference scorer - control, each with its interval."""
    header = ["Threshold", f"pass@1 [{LEVEL} CI]"]
    control = summary.has_control
    if control:
        header += [f"Random pass@1 [{LEVEL} CI]", f"Δ vs random [{LEVEL} CI]"]
    cells = []
    for row in _pass1_rows(summary):
        line = [row.key, _with_ci(row.pass1, row.pass1_ci)]
        if control:
            line += [
                _with_ci(row.control_pass1, row.control_ci),
                _delta_cell(row.vs_control, row.vs_control_ci, "n/a"),
            ]
        cells.append(line)
    return header, cells


def _overview(summary: Summary) -> str:
    """One line of counts and trace-level rates."""
    return (
        f"Problems: {summary.num_problems}, samples per problem: {summary.samples}, "
        f"traces: {summary.num_traces}, "
        f"truncation rate: {_pct(summary.truncation_rate)}, "
        f"original accuracy: {_pct(summary.original_accuracy)}"
    )


COLUMNS_EXPLAINED = (
    "Accuracy is the share of re-evaluated answers graded correct: at every threshold, 0.0 "
    "included, the model writes a fresh answer from the prompt and the kept reasoning steps only. "
    "Steps Kept is the mean percentage of reasoning steps kept per trace. Avg Length is the mean "
    "number of characters of kept reasoning. Tokens Kept is the mean number of reasoning tokens "
    "kept, with their share of all reasoning tokens. Notes give the change against the 0.0 row "
    "(or the smallest threshold): accuracy in percentage points, tokens kept as a relative change. "
    "Original accuracy is the model's own answer before any pruning, graded separately; it is "
    "not the 0.0 row."
)
PASS1_EXPLAINED = (
    "pass@1 is, per problem, the share of its samples answered correctly, averaged over "
    f"problems; intervals are {LEVEL} percentile bootstraps over problems."
)
CONTROL_EXPLAINED = (
    " Random is the random-pruning control that keeps as many steps at the same threshold; "
    "Δ vs random is the paired difference scorer - random in points: an interval above 0 means "
    "the scorer keeps the steps that matter better than chance."
)


def results_markdown(summary: Summary) -> str:
    """The summary as Markdown: title, overview line, the results table with its column
    explanations, then the pass@1 table (intervals, and the random control when there is one)."""
    lines = [f"# Results: {summary.model} on {summary.dataset}", "", _overview(summary), ""]
    lines += _markdown_table(TABLE_HEADER, _summary_cells(summary))
    lines += ["", COLUMNS_EXPLAINED, ""]
    header, cells = _pass1_cells(summary)
    if cells:
        lines += [f"## pass@1 with {LEVEL} intervals", ""]
        lines += _markdown_table(header, cells)
        explained = PASS1_EXPLAINED + (CONTROL_EXPLAINED if summary.has_control else "")
        lines += ["", explained, ""]
    return "\n".join(lines)


def print_summary_table(summary: Summary, console: Console) -> None:
    """Print the results table (same rows as the Markdown), then pass@1 with intervals and the
    random control, then the overview line; compact enough for 80 columns (no vertical rules,
    the baseline note shortened, intervals in whole points under each value)."""
    table = Table(
        title=f"{summary.model} on {summary.dataset}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for name in TABLE_HEADER:
        # Numbers right-aligned so that digits line up; the free-text notes stay left.
        table.add_column(name, justify="left" if name == "Notes" else "right")
    for cells in _summary_cells(summary):
        notes = cells[-1].split(" (")[0]  # "baseline (same path ...)" -> "baseline"
        table.add_row(*cells[:-1], notes)
    console.print(table)

    rows = _pass1_rows(summary)
    if rows:
        control = summary.has_control
        scorer = summary.scorer
        # A line of its own rather than a table title: a title wider than the table wraps.
        console.print(
            f"pass@1{f' of {scorer}' if scorer else ''} over problems, {LEVEL} interval below "
            "each value" + ("; random = the random-pruning control" if control else ""),
            highlight=False,
        )
        pass1 = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for name in ["t", "pass@1"] + (["random", "Δ random"] if control else []):
            pass1.add_column(name, justify="right")
        for row in rows:
            cells = [row.key, _compact(row.pass1, row.pass1_ci)]
            if control:
                cells += [
                    _compact(row.control_pass1, row.control_ci),
                    _compact(row.vs_control, row.vs_control_ci, signed=True),
                ]
            pass1.add_row(*cells, end_section=True)
        console.print(pass1)
    console.print(_overview(summary), highlight=False)


# -- report.md and the terminal tables of `stepprune report` -------------------------------------


def _report_cells(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of report.md's table: one line per row of every run."""
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
            row_label(row, limit=None),  # Markdown has room for the whole spec
            row["mode"],
            threshold_key(row["threshold"]),
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


def _run_line(run: dict[str, Any]) -> str:
    original = _with_ci(run["original_pass1"], run["original_pass1_ci"])
    status = "" if run["finished"] else " (unfinished run: figures cover the records so far)"
    return (
        f"{run['label']}: {run['model']} on {run['dataset']}, {run['num_problems']} problems x "
        f"{run['samples']} samples, {run['num_traces']} traces, truncation rate "
        f"{_pct(run['truncation_rate'])}, original answers' pass@1 {original}{status}"
    )


REPORT_EXPLAINED = (
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
    """The report as Markdown: overview lines, the table, explanations, and links to plots
    (``plots``, relative paths) and to each run's ``importance_plots``."""
    header, cells = _report_cells(report)
    lines = ["# stepprune report", ""]
    lines += [f"- {_run_line(run)}" for run in report["runs"]]
    lines += ["", *_markdown_table(header, cells), "", REPORT_EXPLAINED, ""]
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


def print_report(report: dict[str, Any], console: Console) -> None:
    """The report on a rich console, compact enough for 80 columns: one table per run x scorer
    x mode (the title names them), each value over its interval, and one overview line per run.
    report.md has the same numbers with full headers."""
    level = f"{report['statistics']['level']:.0%}"
    with_run = len(report["runs"]) > 1
    for run in report["runs"]:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in run["rows"]:
            groups.setdefault((row["scorer"], row["mode"]), []).append(row)
        for (_, mode), rows in groups.items():
            title = " · ".join([run["label"]] * with_run + [row_label(rows[0]), mode])
            # A line of its own rather than a table title: a title wider than the table (a
            # control's has no control columns) wraps.
            console.print(title, highlight=False, style="italic")
            table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
            names = ["t", "n", "pass@1", "Δ base", "kept", "saved"]
            with_control = any(row["control_pass1"] is not None for row in rows)
            if with_control:
                names += ["random", "r.kept", "Δ random"]
            for name in names:
                table.add_column(name, justify="right")
            for row in rows:
                cells = [
                    threshold_key(row["threshold"]),
                    str(row["problems"]),
                    _compact(row["pass1"], row["pass1_ci"]),
                    _compact(row["delta"], row["delta_ci"], signed=True) or "base",
                    _pct(row["kept_fraction"]),
                    f"{row['tokens_saved']:.0f}\n{_pct(row['tokens_saved_fraction'])}",
                ]
                if with_control:
                    has = row["control_pass1"] is not None
                    cells += [
                        _compact(row["control_pass1"], row["control_ci"]),
                        _pct(row["control_kept_fraction"]) if has else "",
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
        console.print(_run_line(run), highlight=False)
