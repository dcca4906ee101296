"""Aggregate records into a summary, and render it as Markdown, a terminal table and a plot.

    Records + Traces -> summarize() -> summary dict (summary.json)
                                     -> results_markdown() / print_summary_table()
    Trace -> plot_importance() (PNG of per-step importance)

The summary keys keep the names of the original notebook (``model``, ``dataset``,
``num_problems``, ``thresholds`` -> ``accuracy``, ``avg_steps_kept_pct``, ``avg_output_length``)
so that results written by either can be compared.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from rich import box
from rich.console import Console
from rich.table import Table

from stepprune.schema import Record, Trace

TABLE_HEADER = ("Threshold", "Accuracy", "Steps Kept", "Avg Length", "Tokens Kept", "Notes")
BASELINE_NOTE = "baseline (same path as every threshold)"
REFERENCE_NOTE = "reference for deltas (no 0.0 threshold)"

# Colours for planted-benchmark step labels; anything else (or no label) is drawn grey.
LABEL_COLOURS = {"necessary": "tab:blue", "planted": "tab:orange"}
UNLABELLED_COLOUR = "tab:gray"


def format_threshold(t: float) -> str:
    """The summary key of threshold ``t``: ``repr(float(t))``, e.g. "0.0", "0.1", "0.25".

    Rounded to 6 decimals first so that thresholds built by arithmetic (``0.1 * 3`` =
    0.30000000000000004) get the same key as the literal, and records of one threshold are never
    split across two rows.
    """
    return repr(round(float(t), 6))


def _mean(values: Iterable[float]) -> float | None:
    """Arithmetic mean as a plain float (JSON-serialisable); None for no values."""
    items = [float(v) for v in values]
    return sum(items) / len(items) if items else None


def _threshold_stats(records: Sequence[Record]) -> dict[str, Any]:
    """Aggregates of the records of one threshold (``records`` is never empty)."""
    total = len(records)
    correct = sum(1 for r in records if r.correct)
    reasoning_tokens = sum(r.reasoning_tokens for r in records)
    tokens_kept = sum(r.tokens_kept for r in records)
    return {
        "accuracy": correct / total,
        "correct": correct,
        "total": total,
        "avg_steps_kept_pct": _mean(r.steps_kept_pct for r in records),
        "avg_output_length": _mean(r.chars_kept for r in records),
        "avg_tokens_kept": _mean(r.tokens_kept for r in records),
        # Pooled ratio rather than a mean of per-record percentages: long traces dominate the
        # token cost, so they should dominate the percentage too. No reasoning at all means
        # nothing was pruned, the same convention as Record.steps_kept_pct.
        "avg_tokens_kept_pct": (
            100.0 * tokens_kept / reasoning_tokens if reasoning_tokens else 100.0
        ),
        "avg_answer_tokens": _mean(r.answer_tokens for r in records),
        "answer_truncation_rate": _mean(1.0 if r.answer_truncated else 0.0 for r in records),
    }


def summarize(
    records: list[Record], traces: list[Trace], *, model: str, dataset: str
) -> dict[str, Any]:
    """The summary written to ``summary.json``.

    Problem and sample counts are taken from traces and records together, so that a summary of
    records alone (or of traces that were never re-evaluated) still counts what it has.
    Trace-level figures (``truncation_rate``, ``original_accuracy``, ``avg_reasoning_tokens``)
    are None when there are no traces, rather than a misleading 0.
    """
    problem_ids = {t.problem_id for t in traces} | {r.problem_id for r in records}
    sample_indices = [t.sample for t in traces] + [r.sample for r in records]
    graded = [t.original_correct for t in traces if t.original_correct is not None]

    by_threshold: dict[float, list[Record]] = defaultdict(list)
    for record in records:
        # Group on the formatted key's value so that float noise cannot split a threshold.
        by_threshold[float(format_threshold(record.threshold))].append(record)

    return {
        "model": model,
        "dataset": dataset,
        "num_problems": len(problem_ids),
        "samples": max(sample_indices) + 1 if sample_indices else 0,
        "num_traces": len(traces),
        "truncation_rate": _mean(1.0 if t.truncated else 0.0 for t in traces),
        "original_accuracy": _mean(1.0 if ok else 0.0 for ok in graded),
        "avg_reasoning_tokens": _mean(t.reasoning_end - t.reasoning_start for t in traces),
        "thresholds": {
            format_threshold(t): _threshold_stats(by_threshold[t]) for t in sorted(by_threshold)
        },
    }


def _pct(fraction: float | None) -> str:
    """A fraction in [0, 1] as "xx.x%"; "n/a" when undefined."""
    return "n/a" if fraction is None else f"{100.0 * fraction:.1f}%"


def _sorted_rows(summary: dict[str, Any]) -> list[tuple[float, dict[str, Any]]]:
    """Threshold rows in ascending order (also for a summary read back from JSON)."""
    items = ((float(k), v) for k, v in summary.get("thresholds", {}).items())
    return sorted(items, key=lambda item: item[0])


def _notes(threshold: float, row: dict[str, Any], reference: tuple[float, dict[str, Any]]) -> str:
    """Deltas of ``row`` against the reference row (the 0.0 row, else the smallest threshold)."""
    ref_threshold, ref = reference
    if threshold == 0.0:
        return BASELINE_NOTE
    if threshold == ref_threshold:
        return REFERENCE_NOTE
    parts = [f"{100.0 * (row['accuracy'] - ref['accuracy']):+.1f} pts acc"]
    # Tokens as a relative change: "-41.2% tokens" means 41.2% fewer reasoning tokens kept.
    if ref["avg_tokens_kept"]:
        change = 100.0 * (row["avg_tokens_kept"] - ref["avg_tokens_kept"]) / ref["avg_tokens_kept"]
        parts.append(f"{change:+.1f}% tokens")
    else:
        parts.append("n/a tokens")
    return ", ".join(parts)


def _table_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """The cells of the results table, one tuple per threshold, shared by Markdown and rich."""
    rows = _sorted_rows(summary)
    if not rows:
        return []
    # Prefer the 0.0 row: every threshold goes through the same re-evaluation path, so 0.0 is
    # the fair baseline. Without it, the least-pruned row is the closest stand-in.
    reference = next((item for item in rows if item[0] == 0.0), rows[0])
    cells = []
    for threshold, row in rows:
        cells.append(
            (
                format_threshold(threshold),
                f"{_pct(row['accuracy'])} ({row['correct']}/{row['total']})",
                f"{row['avg_steps_kept_pct']:.1f}%",
                f"{row['avg_output_length']:.0f}",
                f"{row['avg_tokens_kept']:.0f} ({row['avg_tokens_kept_pct']:.1f}%)",
                _notes(threshold, row, reference),
            )
        )
    return cells


def _overview(summary: dict[str, Any]) -> str:
    """One line of counts and trace-level rates."""
    return (
        f"Problems: {summary['num_problems']}, samples per problem: {summary['samples']}, "
        f"traces: {summary['num_traces']}, "
        f"truncation rate: {_pct(summary.get('truncation_rate'))}, "
        f"original accuracy: {_pct(summary.get('original_accuracy'))}"
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


def results_markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown document: title, overview line, table, column explanations."""
    lines = [
        f"# Results: {summary['model']} on {summary['dataset']}",
        "",
        _overview(summary),
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "|".join("---" for _ in TABLE_HEADER) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in _table_rows(summary)]
    lines += ["", COLUMNS_EXPLAINED, ""]
    return "\n".join(lines)


def print_summary_table(summary: dict[str, Any], console: Console) -> None:
    """Print the results table (same rows as the Markdown) to a rich console, compact enough
    for 80 columns: no vertical rules, and the baseline note shortened (results.md explains it).
    """
    table = Table(
        title=f"{summary['model']} on {summary['dataset']}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for name in TABLE_HEADER:
        # Numbers right-aligned so that digits line up; the free-text notes stay left.
        table.add_column(name, justify="left" if name == "Notes" else "right")
    for cells in _table_rows(summary):
        notes = cells[-1].split(" (")[0]  # "baseline (same path ...)" -> "baseline"
        table.add_row(*cells[:-1], notes)
    console.print(table)
    console.print(_overview(summary), highlight=False)


def pick_trace_for_plot(traces: list[Trace]) -> Trace | None:
    """The first trace with the most steps (the most informative plot); None if no traces."""
    # max() keeps the first of equal maxima, which makes the choice stable across runs.
    return max(traces, key=lambda t: len(t.steps)) if traces else None


def plot_importance(trace: Trace, path: Path, title: str | None = None) -> None:
    """Write a bar chart of per-step importance of ``trace`` to ``path`` (format from suffix).

    Bars are coloured by step label when the steps carry one (planted benchmarks), with a
    legend; a dashed line marks the median importance. Steps without a score are left blank.
    A trace without steps gives a figure that says so, so callers need no special case.
    """
    # Object API with an explicit Agg canvas: no pyplot global state, no display needed, and
    # safe to call from worker threads.
    fig = Figure(figsize=(max(6.0, min(0.15 * len(trace.steps), 20.0)), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title or f"Step importance: {trace.problem_id} (sample {trace.sample})")
    ax.set_xlabel("step index")
    ax.set_ylabel("normalised importance")

    if not trace.steps:
        ax.text(0.5, 0.5, "no steps", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        xs = [s.index for s in trace.steps]
        # NaN draws no bar, which shows a missing score honestly instead of as zero.
        ys = [float("nan") if s.importance is None else s.importance for s in trace.steps]
        labelled = any(s.label is not None for s in trace.steps)
        colours = [LABEL_COLOURS.get(s.label or "", UNLABELLED_COLOUR) for s in trace.steps]
        ax.bar(xs, ys, color=colours if labelled else "tab:blue", width=0.8)

        handles: list[Any] = []
        scored = sorted(s.importance for s in trace.steps if s.importance is not None)
        if scored:
            mid = len(scored) // 2
            median = scored[mid] if len(scored) % 2 else (scored[mid - 1] + scored[mid]) / 2
            handles.append(
                ax.axhline(median, color="black", linestyle="--", label=f"median {median:.3g}")
            )
        if labelled:
            present = {s.label for s in trace.steps}
            handles += [
                Patch(color=colour, label=name)
                for name, colour in LABEL_COLOURS.items()
                if name in present
            ]
            if present - LABEL_COLOURS.keys():
                handles.append(Patch(color=UNLABELLED_COLOUR, label="other"))
        if handles:
            # Outside the axes: inside, it hides the tallest bars, which matter most.
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    fig.tight_layout()
    fig.savefig(Path(path))
