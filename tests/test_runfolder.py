"""The run folder: appends, torn lines after a kill, refusal of another experiment, one
writer at a time, the keys and the control rule shared by writer and reader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from stepprune.runfolder import (
    CONTROLS_FILE,
    RECORDS_FILE,
    TRACES_FILE,
    RunFolder,
    RunFolderError,
    adapt_controls,
    control_spec,
    is_control_spec,
    load_run,
    threshold_key,
)
from stepprune.schema import Record, Step, Trace

IDENTITY = {"model": "m", "dataset": "d", "seed": 0}


def _trace(pid: str) -> Trace:
    return Trace(pid, 0, [1, 2], [3, 4, 5], 2, 4, True, True, False, False, [Step(0, 2, 4, "ab")])


def _record(pid: str, threshold: float) -> Record:
    return Record(
        pid, 0, threshold, "text", "s", "p", [0], 1, 1, 2, 2, 2, 2, 5, "x", 1, False, "1", "1", True
    )


def _open(path: Path, identity: dict = IDENTITY, config: dict | None = None) -> RunFolder:
    folder = RunFolder(path, identity, config or {})
    folder.write_config()
    return folder


def test_round_trip_and_reopen(tmp_path: Path) -> None:
    with _open(tmp_path) as folder:
        folder.add_trace(_trace("a"))
        folder.add_records([_record("a", 0.0), _record("a", 0.1)])
    with _open(tmp_path) as again:
        assert again.traces[("a", 0)] == _trace("a")
        assert again.has_record("a", 0, 0.1, "s") and not again.has_record("a", 0, 0.2, "s")
        assert not again.has_record("a", 0, 0.1, "random-control")
    assert json.loads((tmp_path / "config.json").read_text())["identity"] == IDENTITY
    run = load_run(tmp_path)
    assert len(run.traces) == 1 and len(run.records) == 2


def test_a_unit_is_never_written_twice(tmp_path: Path) -> None:
    with _open(tmp_path) as folder:
        folder.add_records([_record("a", 0.0)])
        folder.add_records([_record("a", 0.0), _record("a", 0.5)])
    assert len((tmp_path / RECORDS_FILE).read_text().splitlines()) == 2


def test_control_records_go_to_their_own_file(tmp_path: Path) -> None:
    control = replace(_record("a", 0.1), scorer=control_spec(0, "s"), control_of="s")
    random_scorer = replace(_record("a", 0.1), scorer="random:seed=0")
    with _open(tmp_path) as folder:
        folder.add_trace(_trace("a"))
        folder.add_records([_record("a", 0.1), control, random_scorer])
    assert len((tmp_path / RECORDS_FILE).read_text().splitlines()) == 2  # scorers, random too
    (line,) = (tmp_path / CONTROLS_FILE).read_text().splitlines()
    assert json.loads(line)["control_of"] == "s"
    # Only controls carry the field: a scorer's records are written as before.
    assert all("control_of" not in json.loads(x) for x in (tmp_path / RECORDS_FILE).open())
    with _open(tmp_path) as again:
        assert again.has_record("a", 0, 0.1, "random-control:seed=0,of=s")
        assert again.has_record("a", 0, 0.1, "random:seed=0")
        # The control of another scorer is another unit.
        assert not again.has_record("a", 0, 0.1, control_spec(0, "random:seed=0"))
    assert [r.control_of for r in load_run(tmp_path).records] == [None, None, "s"]


def test_a_control_is_a_record_with_control_of() -> None:
    assert not _record("a", 0.1).is_control
    control = replace(_record("a", 0.1), scorer=control_spec(3, "attention:layers=all"))
    assert not control.is_control  # built by hand without the field: adapted by the reader
    assert replace(control, control_of="attention:layers=all").is_control
    # The names of older folders' controls, which the reader adapts.
    assert is_control_spec("random-control:seed=0") and is_control_spec("random-control")
    assert is_control_spec(control_spec(3, "attention:query=last,layers=all"))
    assert not is_control_spec("random:seed=0") and not is_control_spec("random")
    assert not is_control_spec("random-controlled")


def _old_folder(path: Path, controls: list[str]) -> None:
    """A folder as older versions wrote it: scorer "s" at 0.1 on units a and b, and one
    control row per name in ``controls`` (unit a, then b, ...), none with ``control_of``."""
    records = [_record(pid, 0.1) for pid in ("a", "b")]
    units = zip("ab", controls, strict=True)
    rows = [replace(_record(pid, 0.1), scorer=spec) for pid, spec in units]
    (path / RECORDS_FILE).write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
    (path / CONTROLS_FILE).write_text("".join(json.dumps(r.to_json()) + "\n" for r in rows))
    (path / TRACES_FILE).write_text(json.dumps(_trace("a").to_json()) + "\n")
    (path / "config.json").write_text(json.dumps({"identity": IDENTITY}))
    assert "control_of" not in (path / CONTROLS_FILE).read_text()


def test_reader_adapts_controls_written_before_0_2_to_the_first_scorer(tmp_path: Path) -> None:
    _old_folder(tmp_path, ["random-control:seed=0", "random-control:seed=0"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    run = load_run(tmp_path)
    controls = [r for r in run.records if r.is_control]
    # The first scorer's control, named as the current version names it.
    assert [(r.problem_id, r.scorer, r.control_of) for r in controls] == [
        ("a", control_spec(0, "s"), "s"),
        ("b", control_spec(0, "s"), "s"),
    ]
    assert run.scorer == "s"
    with _open(tmp_path) as folder:  # the writer sees the same: a run of "s" finds them done
        assert folder.has_record("a", 0, 0.1, control_spec(0, "s"))
        assert not folder.has_record("a", 0, 0.1, control_spec(0, "t"))
        assert [r.control_of for r in folder.records.values()] == [None, None, "s", "s"]
    before["config.json"] = (tmp_path / "config.json").read_bytes()  # written by _open
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != ".lock"} == before


def test_reader_adapts_controls_written_by_0_2_from_their_spec(tmp_path: Path) -> None:
    # 0.2 named the scorer in the spec only; a legacy control beside it (an old folder resumed)
    # belongs to the first scorer all the same.
    _old_folder(tmp_path, [control_spec(0, "other:x=1"), "random-control:seed=0"])
    controls = [r for r in load_run(tmp_path).records if r.is_control]
    assert [(r.scorer, r.control_of) for r in controls] == [
        (control_spec(0, "other:x=1"), "other:x=1"),
        (control_spec(0, "s"), "s"),
    ]


def test_adapting_controls_is_idempotent_and_needs_a_scorer() -> None:
    legacy = replace(_record("a", 0.1), scorer="random-control:seed=1")
    assert adapt_controls([legacy]) == [legacy]  # no scorer to belong to: left as it is
    (owned,) = adapt_controls([legacy], owner="t")  # the folder's traces' scorer
    assert (owned.scorer, owned.control_of) == (control_spec(1, "t"), "t")
    records = adapt_controls([_record("a", 0.1), legacy])
    assert adapt_controls(records) == records and records[1].control_of == "s"


def test_threshold_key_is_canonical() -> None:
    assert threshold_key(0.1 * 3) == threshold_key(0.3) == "0.3"
    assert threshold_key(0) == "0.0" and threshold_key(0.25) == "0.25"


def test_partial_last_line_from_a_kill_is_dropped(tmp_path: Path) -> None:
    with _open(tmp_path) as folder:
        folder.add_trace(_trace("a"))
        folder.add_records([_record("a", 0.0)])
    with (tmp_path / RECORDS_FILE).open("a") as handle:
        handle.write('{"problem_id": "a", "sam')  # killed mid-write
    assert len(load_run(tmp_path).records) == 1  # the reader skips it and changes nothing
    assert (tmp_path / RECORDS_FILE).read_text().endswith('"sam')
    with _open(tmp_path) as again:
        assert list(again.records) == [("a", 0, "0.0", "s")]
        again.add_records([_record("a", 0.5)])
    lines = (tmp_path / RECORDS_FILE).read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)


def test_complete_last_line_without_newline_gets_one(tmp_path: Path) -> None:
    # A valid last row whose newline was lost (an editor, a copy): the next append must not
    # glue a record onto it.
    with _open(tmp_path) as folder:
        folder.add_trace(_trace("a"))
        folder.add_records([_record("a", 0.0)])
    path = tmp_path / RECORDS_FILE
    path.write_text(path.read_text().rstrip("\n"))
    with _open(tmp_path) as again:
        assert again.has_record("a", 0, 0.0, "s")
        again.add_records([_record("a", 0.5)])
    assert [json.loads(line)["threshold"] for line in path.read_text().splitlines()] == [0.0, 0.5]
    assert len(load_run(tmp_path).records) == 2


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path: Path) -> None:
    _open(tmp_path).close()
    (tmp_path / TRACES_FILE).write_text('{"broken\n{"also": 1}\n')
    with pytest.raises(RunFolderError, match=r"traces.jsonl: line 1: invalid JSON"):
        RunFolder(tmp_path, IDENTITY, {})


def test_json_row_that_is_not_a_record_names_its_line(tmp_path: Path) -> None:
    with _open(tmp_path) as folder:
        folder.add_trace(_trace("a"))
        folder.add_records([_record("a", 0.0)])
    with (tmp_path / RECORDS_FILE).open("a") as handle:
        handle.write('{"problem_id": "b", "sample": 0}\n')
        handle.write(json.dumps(_record("a", 0.5).to_json()) + "\n")
    with pytest.raises(RunFolderError, match=r"records.jsonl: line 2: not a record"):
        RunFolder(tmp_path, IDENTITY, {})
    with pytest.raises(RunFolderError, match=r"records.jsonl: line 2: not a record"):
        load_run(tmp_path)


def test_non_utf8_bytes_name_the_line(tmp_path: Path) -> None:
    _open(tmp_path).close()
    (tmp_path / TRACES_FILE).write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(RunFolderError, match=r"traces.jsonl: line 2: not UTF-8"):
        RunFolder(tmp_path, IDENTITY, {})


def test_different_model_is_refused_and_config_is_kept(tmp_path: Path) -> None:
    _open(tmp_path, config={"note": "first"}).close()
    with pytest.raises(RunFolderError, match="model='m', not 'other'"):
        RunFolder(tmp_path, {**IDENTITY, "model": "other"}, {"note": "second"})
    assert json.loads((tmp_path / "config.json").read_text())["note"] == "first"


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("keep me")
    with pytest.raises(RunFolderError, match="exists and is not a folder"):
        RunFolder(target, IDENTITY, {})
    with pytest.raises(RunFolderError, match="cannot write there"):
        RunFolder(target / "below", IDENTITY, {})
    assert target.read_text() == "keep me"


HOLD = """
import sys, time
from pathlib import Path
from stepprune.runfolder import RunFolder
folder = RunFolder(Path(sys.argv[1]), {"model": "m", "dataset": "d", "seed": 0}, {})
print("held", flush=True)
time.sleep(60)
"""


def test_one_writer_at_a_time_and_a_killed_writer_leaves_no_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match="another stepprune run is writing"):
            RunFolder(tmp_path, IDENTITY, {})
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the kernel releases a dead process's flock
        try:
            RunFolder(tmp_path, IDENTITY, {}).close()
            break
        except RunFolderError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_folder_of_other_files_is_not_a_run_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match=r"not a run folder \(it holds notes.txt\)"):
        RunFolder(tmp_path, IDENTITY, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    RunFolder(empty, IDENTITY, {}).close()  # a new or empty folder is fine


def test_a_record_with_a_wrong_type_names_line_and_field(tmp_path: Path) -> None:
    with _open(tmp_path) as folder:
        folder.add_trace(_trace("a"))
    row = {**_record("a", 0.0).to_json(), "threshold": "abc"}
    (tmp_path / RECORDS_FILE).write_text(json.dumps(row) + "\n")
    message = r"records.jsonl: line 1: not a record \(threshold = 'abc' is not float\)"
    with pytest.raises(RunFolderError, match=message):
        load_run(tmp_path)
    with pytest.raises(RunFolderError, match=message):
        RunFolder(tmp_path, IDENTITY, {})
    row = {**_record("a", 0.0).to_json(), "correct": 1}  # a number is not a bool
    (tmp_path / RECORDS_FILE).write_text(json.dumps(row) + "\n")
    with pytest.raises(RunFolderError, match="correct = 1 is not bool"):
        load_run(tmp_path)
