"""Figures: step importance of one trace, accuracy against kept tokens, tokens saved.

    Trace       -> importance_figure()   (bars per step, coloured by planted label)
    report dict -> accuracy_figure()     (pass@1 vs kept fraction, CI bands, controls dashed)
                -> tokens_saved_figure() (grouped bars per threshold)
    Figure      -> save_figure()

Every function returns a matplotlib ``Figure`` built with the object API on an Agg canvas: no
pyplot global state, no display needed, safe in worker threads, and tests can inspect what is
drawn. The report dict is ``aggregate.build_report``'s (or ``report.json`` read back).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from stepprune.reporting.labels import row_label
from stepprune.runfolder import threshold_key
from stepprune.schema import Trace

# Colours for planted-benchmark step labels; anything else (or no label) is drawn grey.
LABEL_COLOURS = {"necessary": "tab:blue", "planted": "tab:orange"}
UNLABELLED_COLOUR = "tab:gray"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path | str) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix); returns the path.

    The saved area grows to hold everything drawn: legends sit outside the axes and their
    entries (model · scorer spec · mode) can be wider than the figure.
    """
    path = Path(path)
    # Drawn to a temporary file first: a full disk leaves the old plot, not half a new one.
    tmp = path.with_name(path.name + ".tmp")
    try:
        fig.savefig(tmp, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from None
    return path


def pick_trace_for_plot(traces: list[Trace]) -> Trace | None:
    """The first trace with the most steps (the most informative plot); None if no traces."""
    # max() keeps the first of equal maxima, which makes the choice stable across runs.
    return max(traces, key=lambda t: len(t.steps)) if traces else None


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def importance_figure(trace: Trace, title: str | None = None) -> Figure:
    """Bars of per-step importance of ``trace``: one bar per step at its index.

    Bars are coloured by step label when the steps carry one (planted benchmarks), with a
    legend; a dashed line marks the median importance. A step without a score has a NaN bar
    (nothing drawn: a missing score is not a zero). A trace without steps gives a figure that
    says so, so callers need no special case.
    """
    fig = _figure(max(6.0, min(0.15 * len(trace.steps), 20.0)), 4.0)
    ax = fig.add_subplot()
    ax.set_title(title or f"Step importance: {trace.problem_id} (sample {trace.sample})")
    ax.set_xlabel("step index")
    ax.set_ylabel("normalised importance")
    if not trace.steps:
        ax.text(0.5, 0.5, "no steps", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.tight_layout()
        return fig

    xs = [s.index for s in trace.steps]
    ys = [math.nan if s.importance is None else s.importance for s in trace.steps]
    labelled = any(s.label is not None for s in trace.steps)
    colours = [LABEL_COLOURS.get(s.label or "", UNLABELLED_COLOUR) for s in trace.steps]
    ax.bar(xs, ys, color=colours if labelled else "tab:blue", width=0.8)

    handles: list[Any] = []
    scored = [s.importance for s in trace.steps if s.importance is not None]
    if scored:
        median = _median(scored)
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
    return fig


def plot_importance(trace: Trace, path: Path | str, title: str | None = None) -> Path:
    """Write :func:`importance_figure` of ``trace`` to ``path``."""
    return save_figure(importance_figure(trace, title), path)


# -- report figures ------------------------------------------------------------------------------


def _series(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One plotted line per (run, scorer, mode): its name, the run's colour index, whether it
    is a control, and its rows."""
    series: dict[tuple[str, str, str], dict[str, Any]] = {}
    for colour, run in enumerate(report["runs"]):
        scorers = {(row["scorer"], row["mode"]) for row in run["rows"]}
        for row in run["rows"]:
            key = (run["label"], row["scorer"], row["mode"])
            if key not in series:
                name = run["label"]
                # Several scorers (or a control) in one run: name each, unless the run's label
                # already names this one (a control as "random control (its scorer)", cut
                # short: a legend entry stays on one line).
                if len(scorers) > 1 and row["scorer"] not in name.split(" · "):
                    name += f" · {row_label(row)}"
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
    """pass@1 against the kept fraction of reasoning tokens: one line per (run, scorer, mode),
    points sorted by kept fraction, a CI band under each; controls dashed in their run's colour,
    scorers solid with each point annotated ``t=<threshold>``."""
    fig = _figure(8.0, 5.0)
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
                    f"t={threshold_key(row['threshold'])}",
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


def tokens_saved_figure(report: dict[str, Any]) -> Figure:
    """Mean reasoning tokens removed per trace at each threshold: one group of bars per
    threshold, one bar per (run, scorer, mode) in series order; controls hatched. A threshold a
    series was not evaluated at has a NaN bar (nothing drawn), not "0 tokens saved"."""
    series = _series(report)
    thresholds = sorted({row["threshold"] for line in series for row in line["rows"]})
    fig = _figure(max(6.0, 1.2 * len(thresholds) + 3.0), 4.5)
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    for i, line in enumerate(series):
        by_threshold = {row["threshold"]: row for row in line["rows"]}
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(thresholds))]
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
    ax.set_xticks(range(len(thresholds)), [threshold_key(t) for t in thresholds])
    ax.set_xlabel("pruning threshold (percentile of step importance)")
    ax.set_ylabel("reasoning tokens removed per trace (mean)")
    ax.set_title("Tokens saved per threshold")
    ax.grid(axis="y", alpha=0.3)
    if series:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8)
    fig.tight_layout()
    return fig
