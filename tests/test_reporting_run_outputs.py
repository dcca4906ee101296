"""Tests of stepprune.reporting.run_outputs: what the end of every `stepprune run` writes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from stepprune.aggregate import Summary
from stepprune.reporting.run_outputs import write_run_outputs
from stepprune.runfolder import Run, control_spec, load_run
from stepprune.stats import bootstrap_ci
from tests.run_fixture import ATTENTION, RANDOM, per_problem, write_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The control `stepprune run` names (the fixture's, written as before 0.2, reads as it).
CONTROL = control_spec(0, ATTENTION)


def outputs(
    run: Run, thresholds: list[float], units: set[tuple[str, int]] | None = None, **kwargs: Any
) -> tuple[Summary, str, str]:
    out, err = io.StringIO(), io.StringIO()
    settings: dict[str, Any] = {"scorer": ATTENTION, "control": CONTROL, **kwargs}
    summary = write_run_outputs(
        run, policy="percentile", mode="text", thresholds=thresholds, units=units,
        out=Console(file=out, width=80, color_system=None),
        err=Console(file=err, width=200, color_system=None), **settings,
    )  # fmt: skip
    return summary, out.getvalue(), err.getvalue()


def test_writes_summary_results_and_importance(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "run", dataset="/data/sets/mine.jsonl", finished=False))
    summary, out, err = outputs(run, [0.0, 0.5])

    assert json.loads((run.path / "summary.json").read_text()) == summary.to_json()
    assert (run.path / "summary.json").read_text() == summary.to_text()
    assert (run.path / "importance.png").read_bytes().startswith(PNG_MAGIC)
    results = (run.path / "results.md").read_text()
    assert results.startswith("# Results: org/Tiny-Reasoner-1B on mine\n")
    assert "| Threshold | Accuracy | Steps Kept | Avg Length |" in results
    assert "| Threshold | pass@1 [95% CI] | Random pass@1 [95% CI] |" in results

    # What the orchestrator's last line reads.
    assert (summary.num_problems, summary.samples) == (4, 2)
    assert summary.truncation_rate == pytest.approx(1 / 8)
    assert summary.accuracy_at(0.5) == pytest.approx(3 / 8)
    assert summary.reference_row is summary.row_at(0.0)
    assert (summary.scorer, summary.policy, summary.mode) == (ATTENTION, "percentile", "text")
    assert summary.dataset == "mine" and summary.model == "org/Tiny-Reasoner-1B"

    # The table goes to stdout, the truncation warning to stderr.
    assert "Accuracy" not in err and "37.5% (3/8)" in out
    assert "1 trace(s) stopped at the token budget" in err and "p4#1" in err
    assert "warning" not in out


def test_summary_json_has_pass1_ci_and_the_random_control_per_threshold(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "run"))
    outputs(run, [0.0, 0.5])
    summary = json.loads((run.path / "summary.json").read_text())
    for key in ("0.0", "0.5"):
        row = summary["thresholds"][key]
        threshold = float(key)
        assert row["pass1_ci"] == list(
            bootstrap_ci(list(per_problem(ATTENTION, threshold).values()))
        )
        assert row["random_control_pass1"] == pytest.approx(
            sum(per_problem(RANDOM, threshold).values()) / 4
        )
        assert len(row["random_control_pass1_ci"]) == 2 and len(row["vs_random_ci"]) == 2
    assert summary["thresholds"]["0.5"]["vs_random"] == pytest.approx(0.25)
    assert summary["random_control"]["scorer"] == CONTROL
    assert summary["random_control"]["0.5"]["total"] == 8


def test_only_the_selected_units_thresholds_and_scorers(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "run", extra_config={"max_new_tokens": 64}))
    summary, _, err = outputs(run, [0.5], units={("p4", 0), ("p4", 1)}, control=None)
    assert [row.key for row in summary.rows] == ["0.5"]
    assert (summary.num_problems, summary.num_traces) == (1, 2)
    assert summary.rows[0].records == 2 and summary.rows[0].control_pass1 is None
    assert "random_control" not in json.loads((run.path / "summary.json").read_text())
    assert "stopped at --max-new-tokens 64" in err


def test_threshold_arithmetic_selects_the_records_of_its_key(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run", with_random=False)
    path = folder / "records.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, row in enumerate(rows):
        if row["threshold"] == 0.5:  # half written as 0.3, half as 0.1 * 3
            row["threshold"] = 0.1 * 3 if i % 2 else 0.3
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary, _, _ = outputs(load_run(folder), [0.0, 0.1 * 3], control=None)
    assert list(summary.to_json()["thresholds"]) == ["0.0", "0.3"]
    assert summary.to_json()["thresholds"]["0.3"]["total"] == 8


def test_no_traces_writes_no_importance_plot(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "run"))
    summary, out, err = outputs(run, [0.0], units=set())
    assert summary.num_traces == 0 and summary.rows == [] and summary.reference_row is None
    assert not (run.path / "importance.png").exists() and err == ""
    assert "Problems: 0" in out
