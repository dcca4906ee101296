"""Tests of stepprune.reporting.plots: what each Figure draws (labels, bars, points, lines,
legend, dashes), read back from the matplotlib objects, not from image files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from stepprune.aggregate import build_report
from stepprune.reporting.labels import MAX_LABEL, scorer_label
from stepprune.reporting.plots import (
    LABEL_COLOURS,
    UNLABELLED_COLOUR,
    accuracy_figure,
    importance_figure,
    pick_trace_for_plot,
    save_figure,
    tokens_saved_figure,
)
from stepprune.runfolder import load_run
from stepprune.schema import Step, Trace
from tests.run_fixture import ATTENTION, RANDOM, write_run
from tests.test_aggregate import make_trace

# The fixture's control (written before 0.2, the control of its first scorer) in a legend.
CONTROL_LABEL = scorer_label(RANDOM, ATTENTION)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_steps(importances: list[float | None], labels: list[str | None] | None = None):
    labels = labels or [None] * len(importances)
    return [
        Step(index=i, start=2 + i, end=3 + i, text=f"s{i}", importance=imp, label=lab)
        for i, (imp, lab) in enumerate(zip(importances, labels, strict=True))
    ]


def with_steps(steps: list[Step], problem_id: str = "p1") -> Trace:
    trace = make_trace(problem_id)
    trace.steps = steps
    return trace


def legend_texts(fig: Figure) -> list[str]:
    legend = fig.axes[0].get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


# -- importance ----------------------------------------------------------------------------------


def test_importance_bars_one_per_step_with_median_line() -> None:
    trace = with_steps(make_steps([0.1, 0.4, None, 0.3, 0.2]))
    fig = importance_figure(trace)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "step index" and ax.get_ylabel() == "normalised importance"
    assert ax.get_title() == "Step importance: p1 (sample 0)"
    assert len(ax.patches) == 5
    assert [p.get_x() + p.get_width() / 2 for p in ax.patches] == pytest.approx([0, 1, 2, 3, 4])
    heights = [p.get_height() for p in ax.patches]
    assert math.isnan(heights[2])  # no score: no bar, not a zero bar
    assert [h for i, h in enumerate(heights) if i != 2] == pytest.approx([0.1, 0.4, 0.3, 0.2])
    # Unlabelled steps are one colour; the median of the four scores is a dashed line.
    assert {p.get_facecolor() for p in ax.patches} == {to_rgba("tab:blue")}
    (median,) = ax.get_lines()
    assert median.get_linestyle() == "--"
    assert list(median.get_ydata()) == pytest.approx([0.25, 0.25])
    assert legend_texts(fig) == ["median 0.25"]


def test_importance_bars_coloured_by_label_with_legend() -> None:
    trace = with_steps(make_steps([0.3, 0.6, 0.1], ["necessary", "planted", "restated"]))
    fig = importance_figure(trace, title="custom")
    ax = fig.axes[0]
    assert ax.get_title() == "custom"
    colours = [p.get_facecolor() for p in ax.patches]
    assert colours == [
        to_rgba(LABEL_COLOURS["necessary"]),
        to_rgba(LABEL_COLOURS["planted"]),
        to_rgba(UNLABELLED_COLOUR),
    ]
    assert legend_texts(fig) == ["median 0.3", "necessary", "planted", "other"]


def test_importance_of_a_trace_without_steps_says_so() -> None:
    fig = importance_figure(with_steps([]))
    ax = fig.axes[0]
    assert len(ax.patches) == 0 and ax.get_lines() == []
    assert [t.get_text() for t in ax.texts] == ["no steps"]
    assert fig.axes[0].get_legend() is None


def test_save_figure_writes_the_format_of_the_suffix(tmp_path: Path) -> None:
    path = save_figure(importance_figure(with_steps(make_steps([1.0]))), tmp_path / "one.png")
    assert path == tmp_path / "one.png" and path.read_bytes().startswith(PNG_MAGIC)
    svg = save_figure(importance_figure(with_steps([])), tmp_path / "none.svg")
    assert "<svg" in svg.read_text()


def test_pick_trace_for_plot() -> None:
    assert pick_trace_for_plot([]) is None
    a = with_steps(make_steps([0.5, 0.5]), "a")
    b = with_steps(make_steps([0.2, 0.3, 0.5]), "b")
    c = with_steps(make_steps([0.1, 0.2, 0.7]), "c")
    d = with_steps([], "d")
    assert pick_trace_for_plot([a, b, c, d]) is b  # ties go to the first
    assert pick_trace_for_plot([d]) is d


# -- accuracy vs kept ----------------------------------------------------------------------------


def test_accuracy_figure_lines_points_bands_and_dashed_control(tmp_path: Path) -> None:
    a = load_run(write_run(tmp_path / "a", model="org/Model-A"))
    b = load_run(write_run(tmp_path / "b", model="org/Model-B", with_random=False))
    fig = accuracy_figure(build_report([a, b]))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "kept fraction of reasoning tokens (mean per trace)"
    assert ax.get_ylabel() == "pass@1"
    assert "95% bootstrap CI" in ax.get_title()
    lines = {line.get_label(): line for line in ax.get_lines()}
    names = [
        f"Model-A · attention · text · {ATTENTION}",
        f"Model-A · attention · text · {CONTROL_LABEL}",
        "Model-B · attention · text",
    ]
    assert list(lines) == names and legend_texts(fig) == names
    # Only the control is dashed; it shares its run's colour, another run has another.
    assert [lines[n].get_linestyle() for n in names] == ["-", "--", "-"]
    assert lines[names[1]].get_color() == lines[names[0]].get_color()
    assert lines[names[2]].get_color() != lines[names[0]].get_color()
    # Two thresholds: two points per line, sorted by kept fraction.
    assert all(len(line.get_xdata()) == 2 for line in lines.values())
    main = lines[names[2]]
    assert list(main.get_xdata()) == pytest.approx([70 / 120, 1.0])
    assert list(main.get_ydata()) == pytest.approx([0.375, 0.625])
    assert list(lines[names[1]].get_ydata()) == pytest.approx([0.125, 0.625])
    assert len(ax.collections) == 3  # one CI band per line
    # Thresholds annotated on the scorers' points (2 lines x 2 points), not the control's.
    assert sorted(t.get_text() for t in ax.texts) == ["t=0.0", "t=0.0", "t=0.5", "t=0.5"]


def test_accuracy_figure_a_random_scorer_is_solid_and_the_control_dashed(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "a", scorer="random:seed=0"))
    ax = accuracy_figure(build_report([run])).axes[0]
    styles = {line.get_label(): line.get_linestyle() for line in ax.get_lines()}
    # The run's label names its scorer already: only the control's line adds its label.
    label = "Tiny-Reasoner-1B · random:seed=0 · text"
    assert styles == {label: "-", f"{label} · random control (random:seed=0)": "--"}


def test_accuracy_figure_of_one_scorer_names_the_run_only(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "a", with_random=False))
    fig = accuracy_figure(build_report([run]))
    assert legend_texts(fig) == ["Tiny-Reasoner-1B · attention · text"]


# -- tokens saved --------------------------------------------------------------------------------


def test_tokens_saved_bars_per_series_and_threshold(tmp_path: Path) -> None:
    fig = tokens_saved_figure(build_report([load_run(write_run(tmp_path / "a"))]))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "pruning threshold (percentile of step importance)"
    assert ax.get_ylabel() == "reasoning tokens removed per trace (mean)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0", "0.5"]
    # Series attention then random, each at 0.0 and 0.5: attention cuts 50 tokens, random 70.
    assert len(ax.patches) == 4
    assert [p.get_height() for p in ax.patches] == [0.0, 50.0, 0.0, 70.0]
    # The control's bars are hatched, the scorer's plain; bars of one threshold sit together.
    assert [p.get_hatch() for p in ax.patches] == [None, None, "//", "//"]
    centres = [p.get_x() + p.get_width() / 2 for p in ax.patches]
    assert centres == pytest.approx([-0.2, 0.8, 0.2, 1.2])
    assert legend_texts(fig) == [
        f"Tiny-Reasoner-1B · attention · text · {ATTENTION}",
        f"Tiny-Reasoner-1B · attention · text · {CONTROL_LABEL}",
    ]


def test_legend_names_a_control_by_its_scorer_cut_short(tmp_path: Path) -> None:
    long = "attention:query=last,layers=all,heads=mean,agg=sum,sink=keep"
    # The run's label names the scorer as given (`--scorer attention`), its records the full spec.
    folder = write_run(tmp_path / "a", scorer=long, extra_config={"scorer": "attention"})
    fig = tokens_saved_figure(build_report([load_run(folder)]))
    run = "Tiny-Reasoner-1B · attention · text"
    scorer, control = (text.removeprefix(f"{run} · ") for text in legend_texts(fig))
    assert scorer == long[: MAX_LABEL - 1] + "…"
    assert control == "random control (attention:query=last,l…)"
    assert len(scorer) == len(control) == MAX_LABEL


def test_tokens_saved_leaves_a_missing_threshold_empty(tmp_path: Path) -> None:
    a = load_run(write_run(tmp_path / "a", with_random=False))
    b_dir = write_run(tmp_path / "b", with_random=False)
    path = b_dir / "records.jsonl"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()
                            if '"threshold": 0.5' not in line))  # fmt: skip
    ax = tokens_saved_figure(build_report([a, load_run(b_dir)])).axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 4 and heights[:3] == [0.0, 50.0, 0.0] and math.isnan(heights[3])
