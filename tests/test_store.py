"""The run folder: appends, partial lines after a kill, refusal of a different experiment."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from stepprune.schema import Record, Step, Trace
from stepprune.store import CONTROLS_FILE, RECORDS_FILE, TRACES_FILE, RunFolderError, RunStore

IDENTITY = {"model": "m", "dataset": "d", "seed": 0}


def _trace(pid: str) -> Trace:
    return Trace(pid, 0, [1, 2], [3, 4, 5], 2, 4, True, True, False, False, [Step(0, 2, 4, "ab")])


def _record(pid: str, threshold: float) -> Record:
    return Record(
        pid, 0, threshold, "text", "s", "p", [0], 1, 1, 2, 2, 2, 2, 5, "x", 1, False, "1", "1", True
    )


def test_round_trip_and_reopen(tmp_path: Path) -> None:
    store = RunStore(tmp_path, IDENTITY, {})
    store.add_trace(_trace("a"))
    store.add_records([_record("a", 0.0), _record("a", 0.1)])
    again = RunStore(tmp_path, IDENTITY, {})
    assert again.traces[("a", 0)] == _trace("a")
    assert again.has_record("a", 0, 0.1, "s") and not again.has_record("a", 0, 0.2, "s")
    assert not again.has_record("a", 0, 0.1, "random-control")
    assert json.loads((tmp_path / "config.json").read_text())["identity"] == IDENTITY


def test_control_records_go_to_their_own_file(tmp_path: Path) -> None:
    store = RunStore(tmp_path, IDENTITY, {})
    control = replace(_record("a", 0.1), scorer="random-control:seed=0")
    store.add_records([_record("a", 0.1), control])
    assert len((tmp_path / RECORDS_FILE).read_text().splitlines()) == 1
    assert len((tmp_path / CONTROLS_FILE).read_text().splitlines()) == 1
    again = RunStore(tmp_path, IDENTITY, {})
    assert again.has_record("a", 0, 0.1, "s")
    assert again.has_record("a", 0, 0.1, "random-control:seed=0")


def test_partial_last_line_from_a_kill_is_dropped(tmp_path: Path) -> None:
    store = RunStore(tmp_path, IDENTITY, {})
    store.add_records([_record("a", 0.0)])
    with (tmp_path / RECORDS_FILE).open("a") as handle:
        handle.write('{"problem_id": "a", "sam')  # killed mid-write
    again = RunStore(tmp_path, IDENTITY, {})
    assert list(again.records) == [("a", 0, "0.0", "s")]
    again.add_records([_record("a", 0.5)])
    lines = (tmp_path / RECORDS_FILE).read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / TRACES_FILE).write_text('{"broken\n{"also": 1}\n')
    with pytest.raises(RunFolderError, match=r"traces.jsonl: line 1: invalid JSON"):
        RunStore(tmp_path, IDENTITY, {})


def test_different_model_is_refused_and_config_is_kept(tmp_path: Path) -> None:
    RunStore(tmp_path, IDENTITY, {"note": "first"})
    with pytest.raises(RunFolderError, match="model='m', not 'other'"):
        RunStore(tmp_path, {**IDENTITY, "model": "other"}, {"note": "second"})
    assert json.loads((tmp_path / "config.json").read_text())["note"] == "first"
