"""No lost or wrong records: a command's output never replaces a run folder's file, a folder
without its config.json is not taken over, and a trace remembers the gold it was graded with
(an answer edited after a run was killed between traces and records is refused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepprune.cli import app
from stepprune.runfolder import RunFolder, RunFolderError
from tests.test_runfolder_guards import PROBLEMS, _error_line, _hashes, _run, _write

runner = CliRunner()


def _fake_run(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"config": {"model": "nowhere"}}) + "\n")
    (folder / "records.jsonl").write_text('{"problem_id": "a"}\n')
    (folder / "traces.jsonl").write_text('{"problem_id": "a"}\n')
    return folder


@pytest.mark.parametrize("name", ["records.jsonl", "config.json", "traces.jsonl"])
def test_calibrate_out_never_replaces_a_run_file(tmp_path: Path, name: str) -> None:
    """Refused at once, before the run is read or a model loaded, also through a link."""
    run = _fake_run(tmp_path / "run")
    link = tmp_path / "heads.json"
    link.symlink_to(run / name)
    before = _hashes(run)
    for out in (run / name, link):
        result = runner.invoke(app, ["calibrate", "--run", str(run), "--out", str(out)])
        line = _error_line(result)
        assert f"is a file of the run folder {run.resolve()}; not overwritten" in line, line
    assert _hashes(run) == before


def test_calibrate_out_a_folder_is_refused_first(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run")
    line = _error_line(runner.invoke(app, ["calibrate", "--run", str(run), "--out", str(run)]))
    assert "is a folder" in line


@pytest.mark.parametrize("name", ["traces.jsonl", "records.jsonl", "controls.jsonl"])
def test_results_without_config_json_are_not_taken_over(tmp_path: Path, name: str) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text('{"problem_id": "a"}\n')
    with pytest.raises(RunFolderError, match=f"holds {name} but no config.json"):
        RunFolder(out, {"engine": "hf"}, {})
    assert sorted(p.name for p in out.iterdir()) == [name]  # nothing written, not even a lock
    (out / name).write_text("")  # an empty file is no result: the folder is used
    RunFolder(out, {"engine": "hf"}, {}).close()


def test_lock_error_names_the_option_of_the_command(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with RunFolder(out, {}, {}):
        with pytest.raises(RunFolderError, match=r"another stepprune run is writing"):
            RunFolder(out, {}, {})
        with pytest.raises(RunFolderError) as refused:
            RunFolder(out, {}, {}, option="--run")
    message = str(refused.value)
    assert message.startswith(f"--run {out}:") and "--out" not in message
    assert "another stepprune run" not in message


@pytest.mark.e2e
def test_answer_edited_after_a_kill_between_traces_and_records_is_refused(
    tiny_r1_dir: Path, tmp_path: Path
) -> None:
    """Killed after its traces were written and before their records: the traces hold the gold
    they were graded with, so an answer edited since is refused, not graded anew."""
    data, out = _write(tmp_path / "x.jsonl", PROBLEMS), tmp_path / "run"
    first = _run(tiny_r1_dir, "--dataset", str(data), "--out", str(out), "--no-control")
    assert first.exit_code == 0, first.output
    traces = [json.loads(x) for x in (out / "traces.jsonl").read_text().splitlines()]
    assert [t["gold"] for t in traces] == [p["answer"] for p in PROBLEMS]
    for name in ("records.jsonl", "summary.json", "results.md"):
        (out / name).unlink()  # as a kill between the traces and the records leaves it
    before = _hashes(out)
    _write(data, [PROBLEMS[0], {**PROBLEMS[1], "answer": "25"}])
    line = _error_line(_run(tiny_r1_dir, "--dataset", str(data), "--out", str(out)))
    assert "'b'" in line and "'25'" in line and "graded on '24'" in line, line
    assert _hashes(out) == before


def test_a_lone_surrogate_in_an_id_is_written_and_read_back(tmp_path: Path) -> None:
    from stepprune.runfolder import load_run
    from tests.test_runfolder import _record, _trace

    odd = "q\udc80"
    with RunFolder(tmp_path, {}, {}) as folder:
        folder.write_config()
        folder.add_trace(_trace(odd))
        folder.add_records([_record(odd, 0.0)])
    with RunFolder(tmp_path, {}, {}) as again:
        assert again.has_record(odd, 0, 0.0, "s") and (odd, 0) in again.traces
    assert [r.problem_id for r in load_run(tmp_path).records] == [odd]


@pytest.mark.e2e
def test_edited_forced_reasoning_is_refused_on_resume(tiny_r1_dir: Path, tmp_path: Path) -> None:
    """A teacher-forced problem whose reasoning changed (its statement and answer did not): its
    trace was forced with the old one, so the folder is refused, untouched."""
    data, out = _write(tmp_path / "x.jsonl", PROBLEMS), tmp_path / "run"
    first = _run(tiny_r1_dir, "--dataset", str(data), "--out", str(out), "--no-control")
    assert first.exit_code == 0, first.output
    before = _hashes(out)
    edited = {**PROBLEMS[0], "reasoning": PROBLEMS[0]["reasoning"].replace("blue", "green")}
    _write(data, [edited, PROBLEMS[1]])
    line = _error_line(_run(tiny_r1_dir, "--dataset", str(data), "--out", str(out)))
    assert "'a'" in line and "reasoning" in line and "dataset changed" in line, line
    assert _hashes(out) == before
