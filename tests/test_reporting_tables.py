"""Tests of stepprune.reporting.tables: results.md, report.md and the terminal tables."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from stepprune.aggregate import Summary, build_report, build_summary
from stepprune.reporting.labels import scorer_label
from stepprune.reporting.tables import (
    TABLE_HEADER,
    print_report,
    print_summary_table,
    report_markdown,
    results_markdown,
)
from stepprune.runfolder import control_spec, load_run
from stepprune.schema import Record, Trace
from tests.run_fixture import ATTENTION, write_run
from tests.test_aggregate import make_record, make_trace

CONTROL = control_spec(0, "attention")

HEADER_LINE = "| Threshold | Accuracy | Steps Kept | Avg Length | Tokens Kept | Notes |"


def console(width: int = 80) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=width, color_system=None), buffer


def cells_of(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def summarize(records: list[Record], traces: list[Trace], control: str | None = None) -> Summary:
    return build_summary(
        records, traces, model="m", dataset="d", scorer="attention", control=control,
        policy="percentile", mode="text",
    )  # fmt: skip


def _two_threshold_summary(control: bool = False) -> tuple[Summary, list[Record]]:
    records = [
        make_record("p1", 0.0, True, tokens_kept=100, chars_kept=400),
        make_record("p2", 0.0, True, tokens_kept=100, chars_kept=400),
        make_record("p1", 0.5, True, kept=2, tokens_kept=60, chars_kept=200),
        make_record("p2", 0.5, False, kept=1, tokens_kept=40, chars_kept=100),
    ]
    if control:
        records += [
            make_record(p, t, ok, scorer=CONTROL, kept=2, tokens_kept=50)
            for p, t, ok in [("p1", 0.0, True), ("p2", 0.0, True), ("p1", 0.5, False),
                             ("p2", 0.5, False)]
        ]  # fmt: skip
    traces = [make_trace("p1", original_correct=True), make_trace("p2", original_correct=False)]
    summary = summarize(records, traces, control=CONTROL if control else None)
    return replace(summary, model="tiny-model", dataset="aime24"), records


# -- results.md ----------------------------------------------------------------------------------


def test_results_markdown_header_rows_and_deltas() -> None:
    summary, records = _two_threshold_summary()
    md = results_markdown(summary)
    lines = md.splitlines()
    assert lines[0] == "# Results: tiny-model on aime24"
    header_at = lines.index(HEADER_LINE)
    assert set(lines[header_at + 1]) <= set("|-: ")
    rows = []
    for line in lines[header_at + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(cells_of(line))
    assert len(rows) == 2 and all(len(c) == len(TABLE_HEADER) for c in rows)
    base, pruned = rows
    assert base[:2] == ["0.0", "100.0% (2/2)"]
    assert base[5] == "baseline (same path as every threshold)"
    half = [r for r in records if r.threshold == 0.5]
    assert pruned[0] == "0.5"
    assert pruned[1] == "50.0% (1/2)"
    assert pruned[2] == f"{sum(100 * r.num_kept_steps / r.num_steps for r in half) / 2:.1f}%"
    assert pruned[3] == "150"  # (200 + 100) / 2 characters
    assert pruned[4] == "50 (50.0%)"
    # Accuracy 2/2 -> 1/2 is -50 points; tokens 100 -> 50 on average is -50%.
    assert pruned[5] == "-50.0 pts acc, -50.0% tokens"
    assert "Problems: 2" in md and "traces: 2" in md
    assert "original accuracy: 50.0%" in md and "truncation rate: 0.0%" in md
    assert "characters of kept reasoning" in md and "graded separately" in md


def test_results_markdown_pass1_table_with_the_control() -> None:
    summary, _ = _two_threshold_summary(control=True)
    lines = results_markdown(summary).splitlines()
    header = "| Threshold | pass@1 [95% CI] | Random pass@1 [95% CI] | Δ vs random [95% CI] |"
    at = lines.index(header)
    base, pruned = cells_of(lines[at + 2]), cells_of(lines[at + 3])
    row = summary.row_at(0.5)
    assert row is not None and row.pass1_ci is not None and row.vs_control_ci is not None
    lo, hi = row.pass1_ci
    assert pruned == [
        "0.5",
        f"50.0% [{100 * lo:.1f}, {100 * hi:.1f}]",
        "0.0% [0.0, 0.0]",
        f"+50.0 pts [{100 * row.vs_control_ci[0]:+.1f}, {100 * row.vs_control_ci[1]:+.1f}]",
    ]
    assert base[1] == "100.0% [100.0, 100.0]" and base[3] == "+0.0 pts [+0.0, +0.0]"


def test_results_markdown_pass1_table_without_control_has_no_random_columns() -> None:
    summary, _ = _two_threshold_summary()
    md = results_markdown(summary)
    assert "| Threshold | pass@1 [95% CI] |\n" in md
    assert "Random" not in md


def test_results_markdown_positive_delta_and_no_zero_row() -> None:
    records = [
        make_record("p1", 0.2, False, tokens_kept=80),
        make_record("p2", 0.2, True, tokens_kept=80),
        make_record("p3", 0.2, False, tokens_kept=80),
        make_record("p1", 0.6, True, tokens_kept=20),
        make_record("p2", 0.6, True, tokens_kept=20),
        make_record("p3", 0.6, False, tokens_kept=20),
    ]
    md = results_markdown(summarize(records, []))
    table = md.split(HEADER_LINE)[1].split("\n\n")[0]
    rows = [line for line in table.splitlines() if line.startswith("| 0.")]
    assert len(rows) == 2 and "baseline" not in table
    # Reference is the smallest threshold (0.2): accuracy 1/3 -> 2/3, tokens 80 -> 20.
    assert "+33.3 pts acc, -75.0% tokens" in rows[1]
    assert "reference for deltas" in rows[0]


def test_results_markdown_of_nothing_and_of_an_old_summary() -> None:
    md = results_markdown(summarize([], []))
    assert HEADER_LINE in md.splitlines() and "original accuracy: n/a" in md
    assert "pass@1" not in md  # no rows: no pass@1 table
    # A summary.json written before pass@1 existed still renders its results table.
    data = _two_threshold_summary()[0].to_json()
    for row in data["thresholds"].values():
        del row["pass1"], row["pass1_ci"], row["avg_chars_kept"]
    md = results_markdown(Summary.from_json(data))
    assert "| 0.5 | 50.0% (1/2) | 37.5% | 150 |" in md and "pass@1" not in md


def test_print_summary_table_fits_80_columns() -> None:
    summary, _ = _two_threshold_summary(control=True)
    con, buffer = console()
    print_summary_table(summary, con)
    out = buffer.getvalue()
    for name in TABLE_HEADER:
        assert name in out
    assert "50.0% (1/2)" in out and "-50.0 pts acc" in out
    # pass@1 with its interval in whole points under it, the control beside, Δ vs random.
    assert "pass@1 of attention over problems, 95% interval below each value; random" in out
    row = summary.row_at(0.5)
    assert row is not None and row.pass1_ci is not None
    lo, hi = row.pass1_ci
    assert f"{100 * lo:.0f}–{100 * hi:.0f}" in out and "+50.0" in out
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    assert out.index("Problems:") > out.index("+50.0")  # the overview line comes last


# -- report.md and the terminal report -----------------------------------------------------------


def test_report_markdown_numbers(tmp_path: Path) -> None:
    report = build_report([load_run(write_run(tmp_path / "run"))])
    md = report_markdown(report, plots=["accuracy_vs_kept.png"])
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Scorer"))
    assert "Random pass@1 [95% CI]" in header and "Δ vs random [95% CI]" in header
    assert "| Run " not in header  # one run: no run column
    table = [cells_of(line) for line in lines if line.startswith(f"| {ATTENTION}")]
    assert len(table) == 2
    pruned = table[1]
    lo, hi = report["runs"][0]["rows"][1]["pass1_ci"]
    assert pruned[4] == f"37.5% [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert pruned[5].startswith("-25.0 pts [")
    assert pruned[6:10] == ["58.3%", "50 (41.7%)", pruned[8], "41.7%"]
    assert pruned[8].startswith("12.5% [")
    assert pruned[10].startswith("+25.0 pts [")
    assert table[0][5] == "base"
    # The control is named as the random control of its scorer, whole (Markdown has room).
    control_rows = [cells_of(line) for line in lines if line.startswith("| random control")]
    assert [row[0] for row in control_rows] == [f"random control ({ATTENTION})"] * 2
    assert [row[8:] for row in control_rows] == [["", "", ""], ["", "", ""]]
    assert "![accuracy vs kept](accuracy_vs_kept.png)" in md
    assert "original answers' pass@1 100.0% [100.0, 100.0]" in md


def test_report_markdown_with_a_random_scorer_shows_delta_vs_random(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "run", scorer="random:seed=0"))
    md = report_markdown(build_report([run]))
    rows = [cells_of(line) for line in md.splitlines() if line.startswith("| random:seed=0")]
    assert len(rows) == 2
    assert rows[1][8].startswith("12.5% [") and rows[1][10].startswith("+25.0 pts [")


def test_report_markdown_several_runs_and_pipes(tmp_path: Path) -> None:
    a = load_run(write_run(tmp_path / "a", model="org/odd|name", with_random=False))
    b = load_run(write_run(tmp_path / "b", model="org/Model-B", finished=False))
    md = report_markdown(build_report([a, b]))
    header = next(line for line in md.splitlines() if line.startswith("| Run"))
    assert "Random pass@1" in header  # one run has a control: columns shown, blank for the other
    assert sum(line.startswith("| odd\\|name") for line in md.splitlines()) == 2
    assert sum(line.startswith("| Model-B") for line in md.splitlines()) == 4
    assert "unfinished run" in md


def test_print_report_fits_80_columns(tmp_path: Path) -> None:
    report = build_report([load_run(write_run(tmp_path / "run"))])
    con, buffer = console()
    print_report(report, con)
    text = buffer.getvalue()
    # Titles name the scorer and its control by their labels, cut to MAX_LABEL; nothing else
    # is cut (no rich ellipsis in a cell).
    titles = [scorer_label(ATTENTION), scorer_label("random-control:seed=0", ATTENTION)]
    assert titles == [ATTENTION, "random control (attention:query=last,l…)"]
    assert f"{titles[0]} · text" in text and f"{titles[1]} · text" in text
    assert "…" not in text.replace(titles[1], "")
    assert max(len(line) for line in text.splitlines()) <= 80
    lo, hi = report["runs"][0]["rows"][1]["pass1_ci"]
    assert "37.5%" in text and f"{100 * lo:.0f}–{100 * hi:.0f}" in text and "+25.0" in text
