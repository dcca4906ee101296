"""The random control: the control of one scorer (its spec names it, `of=...`).

A folder reused with another --scorer gets a control for that scorer, keeping as many steps as
it; each scorer is compared only with its own control; controls written before controls named
their scorer stay readable and belong to the folder's first scorer.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepprune.aggregate import aggregate_rows, summary_json
from stepprune.cli import app
from stepprune.runfolder import (
    CONTROLS_FILE,
    RECORDS_FILE,
    RunFolder,
    control_spec,
    load_run,
    record_key,
)
from tests.run_fixture import make_record

ATT = "attention:query=last,layers=all,heads=mean,agg=sum,sink=keep"
LEGACY = "random-control:seed=0"  # a control as written before it named its scorer


def _control(scorer: str) -> str:
    """The spec of the seed-0 control of ``scorer``, as ``runfolder.control_spec`` writes it."""
    return f"random-control:seed=0,of={scorer}"


def test_control_spec_names_its_scorer() -> None:
    assert control_spec(0, ATT) == _control(ATT) and control_spec(0, "uniform") != _control(ATT)


def _records() -> list:
    """Two problems, threshold 0.5: attention keeps 2 of 4 steps, its control 2 other steps
    (wrong answers); uniform keeps all 4, its control all 4 (right answers, like uniform)."""
    out = []
    for pid in ("p1", "p2"):
        out += [
            make_record(pid, 0, 0.5, True, [0, 3], ATT),
            make_record(pid, 0, 0.5, False, [1, 2], _control(ATT)),
            make_record(pid, 0, 0.5, True, [0, 1, 2, 3], "uniform"),
            make_record(pid, 0, 0.5, True, [0, 1, 2, 3], _control("uniform")),
        ]
    return out


def test_each_scorer_is_compared_with_its_own_control_only() -> None:
    rows = {(r.scorer, r.threshold): r for r in aggregate_rows(_records())}
    uniform = rows[("uniform", 0.5)]
    assert uniform.control_pass1 == 1.0 and uniform.control_kept_fraction == 1.0
    assert uniform.vs_control == 0.0
    attention = rows[(ATT, 0.5)]
    assert attention.control_pass1 == 0.0 and attention.vs_control == 1.0
    assert attention.control_kept_fraction == pytest.approx(50 / 120)
    assert rows[(_control("uniform"), 0.5)].control_of == "uniform"


def test_summary_of_the_second_scorer_shows_its_own_control() -> None:
    summary = summary_json(
        _records(), [], model="m", dataset="d", scorer="uniform",
        control=_control("uniform"), policy="percentile", mode="text",
    )  # fmt: skip
    half = summary["thresholds"]["0.5"]
    assert half["avg_steps_kept_pct"] == 100.0
    assert half["random_control_pass1"] == 1.0 and half["vs_random"] == 0.0
    assert summary["random_control"]["0.5"]["avg_steps_kept_pct"] == 100.0
    assert summary["random_control"]["0.5"]["total"] == 2


def test_legacy_controls_belong_to_the_first_scorer() -> None:
    """Controls without `of=` pair with the folder's first scorer, never with a later one."""
    records = [r for r in _records() if r.scorer != _control("uniform")]
    records = [replace(r, scorer=LEGACY) if r.scorer == _control(ATT) else r for r in records]
    rows = {(r.scorer, r.threshold): r for r in aggregate_rows(records)}
    assert rows[(ATT, 0.5)].control_pass1 == 0.0
    assert rows[("uniform", 0.5)].control_pass1 is None  # no control of its own yet
    assert rows[(_control(ATT), 0.5)].control_of == ATT
    summary = summary_json(
        records, [], model="m", dataset="d", scorer="uniform",
        control=_control("uniform"), policy="percentile", mode="text",
    )  # fmt: skip
    assert summary["thresholds"]["0.5"]["random_control_pass1"] is None
    assert summary["random_control"] == {"scorer": _control("uniform")}


def test_legacy_and_named_controls_of_one_scorer_make_one_row() -> None:
    """An old folder resumed with more problems: old units have legacy controls, new ones
    named controls; both are the first scorer's control, in one row."""
    records = [
        make_record("p1", 0, 0.5, True, [0, 3], ATT),
        make_record("p2", 0, 0.5, True, [0, 3], ATT),
        make_record("p1", 0, 0.5, False, [1, 2], LEGACY),
        make_record("p2", 0, 0.5, True, [1, 2], _control(ATT)),
    ]
    rows = aggregate_rows(records)
    assert [(r.scorer, r.problems) for r in rows] == [(ATT, 2), (_control(ATT), 2)]
    assert rows[0].control_pass1 == 0.5


def test_writer_finds_legacy_controls_done_for_the_first_scorer_only(tmp_path: Path) -> None:
    records = [make_record("p1", 0, 0.5, True, [0, 3], ATT)]
    legacy = make_record("p1", 0, 0.5, False, [1, 2], LEGACY)
    (tmp_path / RECORDS_FILE).write_text(json.dumps(records[0].to_json()) + "\n")
    (tmp_path / CONTROLS_FILE).write_text(json.dumps(legacy.to_json()) + "\n")
    # A folder of results is only resumed with its config.json (a pre-0.2 one has identity).
    (tmp_path / "config.json").write_text(json.dumps({"identity": {"model": "m"}}))
    with RunFolder(tmp_path, {"model": "m"}, {}) as folder:
        assert folder.has_record("p1", 0, 0.5, _control(ATT))
        assert not folder.has_record("p1", 0, 0.5, _control("uniform"))
        new = make_record("p1", 0, 0.5, True, [0, 1, 2, 3], _control("uniform"))
        folder.add_records([new])
        folder.write_config()
    (tmp_path / "traces.jsonl").touch()
    assert len((tmp_path / CONTROLS_FILE).read_text().splitlines()) == 2  # appended, not shared
    keys = {record_key(r) for r in load_run(tmp_path).records}
    assert ("p1", 0, "0.5", _control("uniform")) in keys and len(keys) == 3


# -- through the CLI: two scorers on one folder, on the tiny model ---------------------------------

runner = CliRunner()


@pytest.mark.e2e
def test_second_scorer_on_a_folder_gets_its_own_control(tiny_r1_dir: Path, tmp_path: Path) -> None:
    """`run Q; run Q --scorer uniform; report`: uniform's control keeps 100% at 0.5, like
    uniform, and the report shows no difference against it."""
    out = tmp_path / "run"
    args = ["run", "--model", str(tiny_r1_dir), "--device", "cpu", "--limit", "2"]
    args += ["--max-new-tokens", "64", "--thresholds", "0.0,0.5", "--answer-max-tokens", "4"]
    args += ["--out", str(out)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, [*args, "--scorer", "uniform"])
    assert second.exit_code == 0, second.output

    summary = json.loads((out / "summary.json").read_text())
    assert summary["scorer"] == "uniform"
    assert summary["thresholds"]["0.5"]["avg_steps_kept_pct"] == 100.0
    assert summary["random_control"]["0.5"]["avg_steps_kept_pct"] == 100.0
    assert summary["thresholds"]["0.5"]["vs_random"] == 0.0

    report = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["runs"][0]["rows"]
    uniform = next(r for r in rows if r["scorer"] == "uniform" and r["threshold"] == 0.5)
    assert uniform["control_kept_fraction"] == 1.0 and uniform["vs_control"] == 0.0
    assert uniform["control_pass1"] == uniform["pass1"]

    # Records: one control per scorer, named after it.
    records = [json.loads(x) for x in (out / RECORDS_FILE).read_text().splitlines()]
    controls = [json.loads(x) for x in (out / CONTROLS_FILE).read_text().splitlines()]
    scorers = {r["scorer"] for r in records}
    assert len(scorers) == 2 and "uniform" in scorers
    assert {c["scorer"] for c in controls} == {control_spec(0, s) for s in scorers}
    kept = {(r["problem_id"], r["threshold"], r["scorer"]): r["num_kept_steps"] for r in records}
    for control in controls:  # every control keeps as many steps as the scorer it controls
        scorer = control["scorer"].split(",of=", 1)[1]
        assert (
            control["num_kept_steps"] == kept[(control["problem_id"], control["threshold"], scorer)]
        )

    assert summary["random_control"]["scorer"] == control_spec(0, "uniform")
