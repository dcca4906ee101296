"""Tests of stepprune.aggregate.summary: summary.json as the serialisation of ``Summary``, with
the key names (and order) that summary.json has always had."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from stepprune.aggregate import Summary, SummaryRow, build_summary
from stepprune.runfolder import control_spec, load_run
from tests.run_fixture import ATTENTION, write_run

TOP_KEYS = [
    "model",
    "dataset",
    "num_problems",
    "samples",
    "num_traces",
    "truncation_rate",
    "original_accuracy",
    "avg_reasoning_tokens",
    "thresholds",
    "random_control",
    "scorer",
    "policy",
    "mode",
]
# Today's keys of a threshold block, in order; `avg_chars_kept` (the same number as
# `avg_output_length`, under its right name) is the one key added beside them.
THRESHOLD_KEYS = [
    "accuracy",
    "correct",
    "total",
    "avg_steps_kept_pct",
    "avg_output_length",
    "avg_chars_kept",
    "avg_tokens_kept",
    "avg_tokens_kept_pct",
    "avg_answer_tokens",
    "answer_truncation_rate",
    "pass1",
    "pass1_ci",
    "random_control_pass1",
    "random_control_pass1_ci",
    "vs_random",
    "vs_random_ci",
]
CONTROL_BLOCK_KEYS = THRESHOLD_KEYS[:12]  # the control's own rows: no control beside them


def _block(accuracy: float, chars: float, control: bool) -> dict[str, Any]:
    """A threshold block as summary.json held it before ``Summary`` (no avg_chars_kept)."""
    block: dict[str, Any] = {
        "accuracy": accuracy,
        "correct": int(8 * accuracy),
        "total": 8,
        "avg_steps_kept_pct": 50.0,
        "avg_output_length": chars,
        "avg_tokens_kept": 70.0,
        "avg_tokens_kept_pct": 58.333333333333336,
        "avg_answer_tokens": 8.0,
        "answer_truncation_rate": 0.0,
        "pass1": accuracy,
        "pass1_ci": [0.0, 0.75],
    }
    if control:
        block.update(
            random_control_pass1=0.125,
            random_control_pass1_ci=[0.0, 0.375],
            vs_random=0.25,
            vs_random_ci=[0.0, 0.75],
        )
    return block


# summary.json as the version before `Summary` wrote it (keys and order), thresholds unsorted.
OLD_SUMMARY: dict[str, Any] = {
    "model": "org/Tiny-Reasoner-1B",
    "dataset": "aime24",
    "num_problems": 4,
    "samples": 2,
    "num_traces": 8,
    "truncation_rate": 0.125,
    "original_accuracy": 1.0,
    "avg_reasoning_tokens": 120.0,
    "thresholds": {"0.5": _block(0.375, 33.0, True), "0.0": _block(0.625, 107.0, True)},
    "random_control": {"scorer": "random-control:seed=0", "0.5": _block(0.125, 74.0, False)},
    "scorer": ATTENTION,
    "policy": "percentile",
    "mode": "text",
}


def _with_chars_kept(block: dict[str, Any]) -> dict[str, Any]:
    """``block`` with ``avg_chars_kept`` right after ``avg_output_length``."""
    out: dict[str, Any] = {}
    for key, value in block.items():
        out[key] = value
        if key == "avg_output_length":
            out["avg_chars_kept"] = value
    return out


def _folder_summary(tmp_path: Path, control: str | None) -> Summary:
    run = load_run(write_run(tmp_path / "run"))
    return build_summary(
        run.records, run.traces, model=run.model, dataset="aime24", scorer=ATTENTION,
        control=control, policy="percentile", mode="text",
    )  # fmt: skip


def test_summary_json_has_exactly_todays_keys_in_todays_order(tmp_path: Path) -> None:
    summary = _folder_summary(tmp_path, control_spec(0, ATTENTION))
    data = summary.to_json()
    assert list(data) == TOP_KEYS
    assert list(data["thresholds"]) == ["0.0", "0.5"]
    for block in data["thresholds"].values():
        assert list(block) == THRESHOLD_KEYS
        assert block["avg_output_length"] == block["avg_chars_kept"]
    assert list(data["random_control"]) == ["scorer", "0.0", "0.5"]
    assert all(list(data["random_control"][k]) == CONTROL_BLOCK_KEYS for k in ("0.0", "0.5"))
    # The attributes are named for what they hold: characters of kept reasoning, by hand
    # (steps 0 and 3 of the fixture at 0.5).
    half = summary.row_at(0.5)
    assert half is not None and half.records == 8
    assert half.avg_chars_kept == pytest.approx(len("First, 3 + 4 = 7.Then 7 * 2 = 14."))
    assert data["thresholds"]["0.5"]["total"] == half.records
    assert data["thresholds"]["0.5"]["vs_random"] == half.vs_control == pytest.approx(0.25)


def test_summary_round_trips_through_its_json(tmp_path: Path) -> None:
    for control in (control_spec(0, ATTENTION), None):
        summary = _folder_summary(tmp_path / str(control is None), control)
        text = summary.to_text()
        assert Summary.from_json(json.loads(text)) == summary
        assert Summary.from_json(json.loads(text)).to_text() == text
    assert "random_control" not in summary.to_json()  # the last one: no control


def test_a_summary_written_before_summary_existed_reads_back_with_the_same_keys() -> None:
    old = copy.deepcopy(OLD_SUMMARY)
    summary = Summary.from_json(old)
    assert old == OLD_SUMMARY  # reading changes nothing
    assert [row.threshold for row in summary.rows] == [0.0, 0.5]  # sorted
    assert summary.accuracy_at(0.5) == 0.375 and summary.accuracy_at(0.25) is None
    assert summary.rows[1].avg_chars_kept == 33.0 and summary.rows[1].control_ci == (0.0, 0.375)
    assert summary.control == "random-control:seed=0"
    assert [row.avg_chars_kept for row in summary.control_rows] == [74.0]
    expected = copy.deepcopy(OLD_SUMMARY)
    expected["thresholds"] = {
        k: _with_chars_kept(expected["thresholds"][k]) for k in ("0.0", "0.5")
    }
    expected["random_control"]["0.5"] = _with_chars_kept(expected["random_control"]["0.5"])
    assert summary.to_json() == expected
    assert json.dumps(summary.to_json()) == json.dumps(expected)  # same order too


def test_an_older_summary_without_pass1_or_control_reads_as_none() -> None:
    old = copy.deepcopy(OLD_SUMMARY)
    del old["random_control"], old["scorer"]
    for block in old["thresholds"].values():
        for key in ("pass1", "pass1_ci", "random_control_pass1", "random_control_pass1_ci"):
            del block[key]
    summary = Summary.from_json(old)
    assert summary.control is None and summary.control_rows == [] and summary.scorer == ""
    assert all(row.pass1 is None and row.control_pass1 is None for row in summary.rows)
    assert not summary.has_control
    with pytest.raises(KeyError, match="avg_output_length"):
        SummaryRow.from_json("0.5", {"accuracy": 1.0, "correct": 1, "total": 1})


def test_reference_row_is_zero_else_the_least_pruned() -> None:
    summary = Summary.from_json(OLD_SUMMARY)
    assert summary.reference_row is summary.row_at(0.0)
    summary.rows = summary.rows[1:]
    assert summary.reference_row is summary.row_at(0.5)
    summary.rows = []
    assert summary.reference_row is None and summary.accuracy_at(0.0) is None
