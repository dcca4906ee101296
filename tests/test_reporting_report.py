"""Tests of `stepprune report` (stepprune.reporting.report) on hand-written run folders."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from stepprune.aggregate import aggregate_rows
from stepprune.reporting.labels import scorer_label
from stepprune.reporting.report import ReportError, default_report_dir, write_report
from stepprune.runfolder import RunFolderError, load_run
from tests.run_fixture import ATTENTION, RANDOM, write_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def console(width: int = 80) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=width, color_system=None), buffer


def test_default_report_dir() -> None:
    assert default_report_dir([Path("runs/a")]) == Path("runs/a/report")
    assert default_report_dir([Path("runs/a"), Path("runs/b")]) == Path("runs/report")


def test_write_report_single_run(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run")
    out = tmp_path / "report"
    con, buffer = console()
    report = write_report([run_dir], out, con, max_importance_plots=3)

    names = ["accuracy_vs_kept.png", "tokens_saved.png", "report.md", "report.json"]
    assert report["files"] == [str(out / name) for name in names]
    for name in names[:2]:
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    (entry,) = report["runs"]
    # The first traces of sample 0 come first: they show different problems.
    assert entry["importance_plots"] == [
        f"importance/{entry['label'].replace(' · ', '_')}/p{i}_s0.png" for i in (1, 2, 3)
    ]
    for rel in entry["importance_plots"]:
        assert (out / rel).read_bytes().startswith(PNG_MAGIC)

    # report.json holds the aggregation's numbers.
    saved = json.loads((out / "report.json").read_text())
    rows = aggregate_rows(load_run(run_dir).records, entry["label"])
    assert [r["pass1"] for r in saved["runs"][0]["rows"]] == [r.pass1 for r in rows]
    assert [r["vs_control_ci"] for r in saved["runs"][0]["rows"]] == [
        None if r.vs_control_ci is None else list(r.vs_control_ci) for r in rows
    ]
    assert saved["statistics"]["n_resamples"] == 2000
    assert saved["runs"][0]["samples"] == 2 and saved["runs"][0]["num_problems"] == 4
    assert saved["runs"][0]["truncation_rate"] == pytest.approx(1 / 8)
    assert saved["runs"][0]["finished"] is True

    md = (out / "report.md").read_text()
    assert len([line for line in md.splitlines() if line.startswith(f"| {ATTENTION}")]) == 2
    assert "![accuracy vs kept](accuracy_vs_kept.png)" in md
    assert "## Step importance per trace" in md

    # The terminal shows the same numbers within 80 columns, then the files written.
    text = buffer.getvalue()
    table, written = text.rsplit("report written to", 1)
    control = scorer_label(RANDOM, ATTENTION)  # the only label cut short, nothing else is
    assert "…" not in table.replace(control, "")
    assert max(len(line) for line in table.splitlines()) <= 80
    assert f"{ATTENTION} · text" in text and f"{control} · text" in text
    assert "report.md" in written


def test_write_report_several_runs_side_by_side(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", model="org/Model-A", with_random=False)
    b = write_run(tmp_path / "b", model="org/Model-B", finished=False)
    report = write_report([a, b], tmp_path / "out", None, max_importance_plots=1)
    assert [r["label"] for r in report["runs"]] == [
        "Model-A · attention · text",
        "Model-B · attention · text",
    ]
    assert (tmp_path / "out" / "importance" / "Model-A_attention_text").is_dir()
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| Run |" in md and "unfinished run" in md


def test_write_report_bootstrap_settings(tmp_path: Path) -> None:
    report = write_report(
        [write_run(tmp_path / "a")], tmp_path / "out", None, n_resamples=100, seed=3, level=0.9,
        max_importance_plots=0,
    )  # fmt: skip
    stats = report["statistics"]
    assert (stats["n_resamples"], stats["seed"], stats["level"]) == (100, 3, 0.9)
    assert "pass@1 [90% CI]" in (tmp_path / "out" / "report.md").read_text()


def test_write_report_refuses_a_non_run_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="config.json is missing"):
        write_report([tmp_path / "empty"], tmp_path / "out", None)
    with pytest.raises(ValueError, match="at least one"):
        write_report([], tmp_path / "out", None)


def test_a_report_folder_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    cases = [
        (plain, f"report folder {plain}: exists and is not a folder"),
        (plain / "sub", f"report folder {plain}/sub: {plain} is a file, not a folder"),
        (Path("/sys/stepprune-report"), "report folder /sys/stepprune-report: cannot write there"),
    ]
    for out, message in cases:
        con, buffer = console()
        with pytest.raises(ReportError) as caught:
            write_report([run_dir], out, con, max_importance_plots=0)
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
        assert buffer.getvalue() == ""  # no table printed for a report that was not written


def test_tables_and_the_closing_line_go_to_their_consoles(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run")
    (out, tables), (err, closing) = console(), console()
    write_report([run_dir], tmp_path / "report", out, max_importance_plots=0, err=err)
    assert "pass@1" in tables.getvalue() and "report written" not in tables.getvalue()
    assert closing.getvalue().startswith("report written to") and "pass@1" not in closing.getvalue()


# -- reports read run folders as runfolder.load_run does: never changing them ---------------------


def test_report_of_a_run_being_written_skips_its_partial_line(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run", finished=False)
    path = folder / "records.jsonl"
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"problem_id": "p9", "sample": 0, "thresh')  # a run killed mid-write
    before = path.read_bytes()
    report = write_report([folder], tmp_path / "out", None, max_importance_plots=0)
    assert sum(row["records"] for row in report["runs"][0]["rows"]) == 32
    assert path.read_bytes() == before  # a reader never modifies results


def test_report_counts_duplicate_lines_once(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run")
    for name in ("traces.jsonl", "records.jsonl"):
        text = (folder / name).read_text(encoding="utf-8")
        (folder / name).write_text(text + text, encoding="utf-8")
    report = write_report([folder], tmp_path / "out", None, max_importance_plots=0)
    assert report["runs"][0]["num_traces"] == 8
    assert sum(row["records"] for row in report["runs"][0]["rows"]) == 32


def test_importances_are_those_of_the_scorer_shown(tmp_path, monkeypatch) -> None:
    # A folder reused with a second scorer keeps the first scorer's importances in its traces
    # and the second's in scores.jsonl: plots and shading use the scorer they name.
    from stepprune.reporting import report as report_module
    from stepprune.runfolder import Run
    from tests.run_fixture import make_trace

    trace = make_trace("p1", 0)
    trace.scorer = "attention"
    length = [0.1, 0.2, 0.3, 0.4]
    run = Run(tmp_path, {}, [trace], [], None, {("p1", 0, "length"): length})
    assert [s.importance for s in run.scored_trace(trace, "length").steps] == length
    assert run.scored_trace(trace, "attention") is trace
    assert run.scored_trace(trace, "position") is trace  # unknown: as it is
    drawn = []
    monkeypatch.setattr(report_module, "importance_figure", lambda t, title: drawn.append(t))
    monkeypatch.setattr(report_module, "save_figure", lambda fig, path: path)
    monkeypatch.setattr(Run, "scorer", property(lambda self: "length"))
    report_module.plot_importances(run, "length run", tmp_path, limit=1)
    assert [s.importance for s in drawn[0].steps] == length
