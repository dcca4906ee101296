"""Tests of stepprune.runs and stepprune.compare on hand-written run folders (no model)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from stepprune.compare import (
    accuracy_figure,
    build_report,
    default_report_dir,
    report_markdown,
    run_labels,
    run_table,
    tokens_saved_figure,
    write_report,
)
from stepprune.runs import load_run
from stepprune.stats import bootstrap_ci, paired_delta
from stepprune.store import RunFolderError
from tests.run_fixture import ATTENTION, RANDOM, per_problem, write_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def console(width: int = 250) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=width, color_system=None), buffer


# -- runs.load_run ---------------------------------------------------------------------------


def test_load_run_reads_everything(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "run"))
    assert run.model == "org/Tiny-Reasoner-1B"
    assert run.dataset == "aime24"
    assert (run.scorer, run.mode) == ("attention", "text")
    assert len(run.traces) == 8
    assert len(run.records) == 4 * 2 * 4  # (scorer, threshold) pairs x problems x samples
    assert run.summary == {"model": "org/Tiny-Reasoner-1B"}
    assert run.problem_ids == ["p1", "p2", "p3", "p4"]
    assert run.trace("p2", 1) is not None and run.trace("p2", 7) is None


@pytest.mark.parametrize("missing", ["config.json", "traces.jsonl", "records.jsonl"])
def test_load_run_names_the_missing_file(tmp_path: Path, missing: str) -> None:
    folder = write_run(tmp_path / "run")
    (folder / missing).unlink()
    with pytest.raises(RunFolderError, match=f"not a run folder: {missing} is missing") as info:
        load_run(folder)
    assert "\n" not in str(info.value)


def test_load_run_rejects_missing_path_and_file(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="no such run folder"):
        load_run(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(RunFolderError, match="not a run folder"):
        load_run(tmp_path / "file.txt")


def test_summary_is_optional(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "run", finished=False))
    assert run.summary is None


def test_partial_last_line_is_skipped_without_touching_the_file(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run")
    path = folder / "records.jsonl"
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"problem_id": "p9", "sample": 0, "thresh')  # a run killed mid-write
    before = path.read_bytes()
    run = load_run(folder)
    assert len(run.records) == 32
    assert "p9" not in {r.problem_id for r in run.records}
    assert path.read_bytes() == before  # a reader never modifies results


def test_corrupted_middle_line_is_an_error_with_its_line(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run")
    path = folder / "traces.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = "not json\n"
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(RunFolderError, match=r"traces.jsonl: line 3: invalid JSON"):
        load_run(folder)


def test_duplicate_lines_count_once(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run")
    for name in ("traces.jsonl", "records.jsonl"):
        text = (folder / name).read_text(encoding="utf-8")
        (folder / name).write_text(text + text, encoding="utf-8")
    run = load_run(folder)
    assert (len(run.traces), len(run.records)) == (8, 32)


# -- compare.run_table -----------------------------------------------------------------------


def test_run_table_numbers_by_hand(tmp_path: Path) -> None:
    rows = run_table(load_run(write_run(tmp_path / "run")), "label")
    assert [(r.scorer, r.threshold) for r in rows] == [
        (ATTENTION, 0.0),
        (ATTENTION, 0.5),
        (RANDOM, 0.0),
        (RANDOM, 0.5),
    ]
    base, pruned, random_base, random_pruned = rows

    # pass@1 = mean over problems of the mean over samples: (1 + .5 + 1 + 0) / 4.
    assert base.pass1 == pytest.approx(0.625)
    assert base.pass1_ci == bootstrap_ci(list(per_problem(ATTENTION, 0.0).values()))
    assert base.problems == 4 and base.records == 8
    assert base.delta is None and base.reference_threshold == 0.0

    # 0.5: (1 + 0 + .5 + 0) / 4; paired against 0.0: (0 - .5 - .5 + 0) / 4.
    assert pruned.pass1 == pytest.approx(0.375)
    assert pruned.delta == pytest.approx(-0.25)
    assert (pruned.delta, pruned.delta_ci) == paired_delta(
        per_problem(ATTENTION, 0.5), per_problem(ATTENTION, 0.0)
    )
    assert pruned.delta_ci[0] < -0.0 and pruned.delta_ci[1] <= 0.0
    assert pruned.per_problem == per_problem(ATTENTION, 0.5)

    # Steps 0 and 3 kept: 10 + 60 of 120 tokens, 2 of 4 steps.
    assert pruned.kept_fraction == pytest.approx(70 / 120)
    assert pruned.steps_kept_fraction == pytest.approx(0.5)
    assert pruned.tokens_saved == pytest.approx(50.0)
    assert pruned.tokens_saved_fraction == pytest.approx(50 / 120)
    assert base.kept_fraction == pytest.approx(1.0) and base.tokens_saved == 0.0

    # Random control beside the attention row: (0 + 0 + .5 + 0) / 4; attention - random.
    assert pruned.control_pass1 == pytest.approx(0.125)
    assert pruned.control_kept_fraction == pytest.approx(50 / 120)  # steps 1 and 2
    assert pruned.vs_control == pytest.approx(0.25)
    assert (pruned.vs_control, pruned.vs_control_ci) == paired_delta(
        per_problem(ATTENTION, 0.5), per_problem(RANDOM, 0.5)
    )
    assert base.vs_control == 0.0 and base.vs_control_ci == (0.0, 0.0)

    # Control rows are rows of their own, never compared with themselves.
    assert random_base.is_control and random_pruned.is_control
    assert random_pruned.pass1 == pytest.approx(0.125)
    assert random_pruned.delta == pytest.approx(0.125 - 0.625)
    assert random_pruned.control_pass1 is None and random_pruned.vs_control is None


def test_run_table_without_control_and_with_float_noise(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run", with_random=False)
    path = folder / "records.jsonl"
    # 0.1 * 5 is 0.5 exactly, but 0.1 * 3 is not 0.3: rewrite 0.5 as 0.30000000000000004 on
    # half of the lines; they must still be one row with the exact 0.3 lines.
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, row in enumerate(rows):
        if row["threshold"] == 0.5:
            row["threshold"] = 0.1 * 3 if i % 2 else 0.3
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = run_table(load_run(folder))
    assert [r.threshold for r in table] == [0.0, 0.3]
    assert table[1].records == 8
    assert all(r.control_pass1 is None for r in table)


def test_reference_is_smallest_threshold_without_zero(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run", with_random=False)
    path = folder / "records.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["threshold"] != 0.0))
    (only,) = run_table(load_run(folder))
    assert only.reference_threshold == 0.5 and only.delta is None


# -- labels and the report -------------------------------------------------------------------


def test_labels_tell_runs_apart(tmp_path: Path) -> None:
    a = load_run(write_run(tmp_path / "a", model="org/Model-A"))
    b = load_run(write_run(tmp_path / "b", model="/local/models/Model-B.gguf"))
    assert run_labels([a, b]) == ["Model-A · attention · text", "Model-B · attention · text"]
    c = load_run(write_run(tmp_path / "c", model="org/Model-A"))
    assert run_labels([a, c]) == [
        "Model-A · attention · text (a)",
        "Model-A · attention · text (c)",
    ]
    d = load_run(write_run(tmp_path / "d", model="org/Model-A", dataset="math500"))
    assert run_labels([a, d]) == [
        "Model-A · aime24 · attention · text",
        "Model-A · math500 · attention · text",
    ]


def test_default_report_dir() -> None:
    assert default_report_dir([Path("runs/a")]) == Path("runs/a/report")
    assert default_report_dir([Path("runs/a"), Path("runs/b")]) == Path("runs/report")


def test_write_report_single_run(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run")
    out = tmp_path / "report"
    con, buffer = console(width=80)
    report = write_report([run_dir], out, con, max_importance_plots=3)

    for name in ("accuracy_vs_kept.png", "tokens_saved.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    (entry,) = report["runs"]
    # The first traces of sample 0 come first: they show different problems.
    assert entry["importance_plots"] == [
        f"importance/{entry['label'].replace(' · ', '_')}/p{i}_s0.png" for i in (1, 2, 3)
    ]
    for rel in entry["importance_plots"]:
        assert (out / rel).read_bytes().startswith(PNG_MAGIC)

    # report.json holds the same numbers as run_table.
    saved = json.loads((out / "report.json").read_text())
    rows = run_table(load_run(run_dir), entry["label"])
    assert [r["pass1"] for r in saved["runs"][0]["rows"]] == [r.pass1 for r in rows]
    assert [r["vs_control_ci"] for r in saved["runs"][0]["rows"]] == [
        None if r.vs_control_ci is None else list(r.vs_control_ci) for r in rows
    ]
    assert saved["statistics"]["n_resamples"] == 2000
    assert saved["runs"][0]["samples"] == 2 and saved["runs"][0]["num_problems"] == 4
    assert saved["runs"][0]["truncation_rate"] == pytest.approx(1 / 8)
    assert saved["runs"][0]["finished"] is True

    md = (out / "report.md").read_text()
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Scorer"))
    assert "Random pass@1 [95% CI]" in header and "Δ vs random [95% CI]" in header
    assert "| Run " not in header  # one run: no run column
    table = [line for line in lines if line.startswith(f"| {ATTENTION}")]
    assert len(table) == 2
    pruned = [c.strip() for c in table[1].strip("|").split("|")]
    lo, hi = rows[1].pass1_ci
    assert pruned[4] == f"37.5% [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert pruned[5].startswith("-25.0 pts [")
    assert pruned[6] == "58.3%"
    assert pruned[7] == "50 (41.7%)"
    assert pruned[8].startswith("12.5% [")
    assert pruned[9] == "41.7%"
    assert pruned[10].startswith("+25.0 pts [")
    assert "![accuracy vs kept](accuracy_vs_kept.png)" in md
    assert "original answers' pass@1 100.0%" in md

    # The terminal shows the same numbers, intervals in whole points, within 80 columns.
    text = buffer.getvalue()
    table, written = text.rsplit("report written to", 1)
    assert "…" not in table and max(len(line) for line in table.splitlines()) <= 80
    assert f"{ATTENTION} · text" in text and f"{RANDOM} · text" in text
    assert "37.5%" in text and f"{100 * lo:.0f}–{100 * hi:.0f}" in text
    assert "+25.0" in text and "report written to" not in table and "report.md" in written


def test_write_report_several_runs_side_by_side(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", model="org/Model-A", with_random=False)
    b = write_run(tmp_path / "b", model="org/Model-B", finished=False)
    report = write_report([a, b], tmp_path / "out", None, max_importance_plots=1)
    md = (tmp_path / "out" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Run"))
    assert "Random pass@1" in header  # one run has a control: columns shown, blank for the other
    assert sum(line.startswith("| Model-A") for line in md.splitlines()) == 2
    assert sum(line.startswith("| Model-B") for line in md.splitlines()) == 4
    assert "unfinished run" in md
    assert [r["label"] for r in report["runs"]] == [
        "Model-A · attention · text",
        "Model-B · attention · text",
    ]
    assert (tmp_path / "out" / "importance" / "Model-A_attention_text").is_dir()


def test_accuracy_figure_lines_bands_and_dashed_control(tmp_path: Path) -> None:
    a = load_run(write_run(tmp_path / "a", model="org/Model-A"))
    b = load_run(write_run(tmp_path / "b", model="org/Model-B", with_random=False))
    report = build_report([a, b])
    ax = accuracy_figure(report).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {
        f"Model-A · attention · text · {ATTENTION}",
        f"Model-A · attention · text · {RANDOM}",
        "Model-B · attention · text",
    }
    control = lines[f"Model-A · attention · text · {RANDOM}"]
    assert control.get_linestyle() == "--"
    main = lines["Model-B · attention · text"]
    assert main.get_linestyle() == "-"
    # Points sorted by kept fraction: (70/120, 0.375) then (1.0, 0.625).
    assert list(main.get_xdata()) == pytest.approx([70 / 120, 1.0])
    assert list(main.get_ydata()) == pytest.approx([0.375, 0.625])
    assert len(ax.collections) == 3  # one CI band per line
    # Each run keeps its colour; its control shares it.
    assert control.get_color() == lines[f"Model-A · attention · text · {ATTENTION}"].get_color()
    assert main.get_color() != control.get_color()


def test_tokens_saved_figure_bar_heights(tmp_path: Path) -> None:
    report = build_report([load_run(write_run(tmp_path / "a"))])
    ax = tokens_saved_figure(report).axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    # Series attention then random, each at 0.0 and 0.5: attention cuts 50 tokens, random 70.
    assert heights == [0.0, 50.0, 0.0, 70.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0", "0.5"]


def test_markdown_escapes_pipes_in_labels(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "a", model="org/odd|name"))
    report = build_report([run, load_run(write_run(tmp_path / "b"))])
    md = report_markdown(report)
    row = next(line for line in md.splitlines() if line.startswith("| odd"))
    assert row.startswith("| odd\\|name")


def test_write_report_refuses_a_non_run_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="config.json is missing"):
        write_report([tmp_path / "empty"], tmp_path / "out", None)
    with pytest.raises(ValueError, match="at least one"):
        write_report([], tmp_path / "out", None)
