"""A full disk: the run stops with one line naming its folder, the folder keeps only complete
lines, and the same command, once space is freed, ends with the records of an uninterrupted
run. On a small tmpfs, so only where the test runs as root (skipped otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepprune.runfolder import RunFolder, RunFolderError
from tests.test_runfolder import _record, _trace
from tests.test_runfolder_guards import PROBLEMS, _run, _write

PAGE = 4096
COMPARED = ["answer_text", "prediction", "correct", "kept_steps", "tokens_kept", "gold"]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A file taking all of ``disk``'s free space but ``leave`` bytes."""
    filler = disk / "filler"
    stat = os.statvfs(disk)
    size = stat.f_bavail * stat.f_frsize - leave
    with filler.open("wb") as handle:
        handle.write(b"\0" * max(0, size))
    return filler


def _complete_lines(folder: Path) -> None:
    for path in folder.glob("*.jsonl"):
        raw = path.read_bytes()
        assert not raw or raw.endswith(b"\n"), path
        for line in raw.splitlines():
            json.loads(line)
    assert not list(folder.glob("*.tmp")), list(folder.iterdir())


def test_a_full_disk_keeps_whole_lines_and_names_the_folder(tmpfs: Path) -> None:
    out = tmpfs / "run"
    with RunFolder(out, {}, {}) as folder:
        folder.write_config()
    filler = _fill(tmpfs, PAGE // 2)
    written = 0
    with RunFolder(out, {}, {}) as folder, pytest.raises(RunFolderError) as refused:
        for i in range(1000):
            folder.add_trace(_trace(f"p{i}"))
            folder.add_records([_record(f"p{i}", 0.0), _record(f"p{i}", 0.5)])
            written = i + 1
    message = str(refused.value)
    assert message.startswith(f"{out}: cannot write ") and "No space left on device" in message
    assert "run the same command again" in message
    _complete_lines(out)
    filler.unlink()
    with RunFolder(out, {}, {}) as folder:  # resumed: what was written, and more
        assert len(folder.traces) >= written
        for i in range(written, written + 3):
            folder.add_trace(_trace(f"p{i}"))
    _complete_lines(out)


@pytest.mark.e2e
@pytest.mark.parametrize("phase", ["tracing", "re-evaluating", "summarising"])
def test_a_run_on_a_full_disk_resumes_to_the_records_of_an_uninterrupted_run(
    tiny_r1_dir: Path, tmp_path: Path, tmpfs: Path, phase: str
) -> None:
    problems = PROBLEMS * 3
    problems = [{**p, "id": f"{p['id']}{i}"} for i, p in enumerate(problems)]
    data = _write(tmp_path / "x.jsonl", problems)
    args = ["--dataset", str(data), "--samples", "2"]
    whole = tmp_path / "whole"
    assert _run(tiny_r1_dir, *args, "--out", str(whole)).exit_code == 0
    sizes = {p.name: p.stat().st_size for p in whole.iterdir() if p.is_file()}
    # Room for config.json and what comes before the phase, and less than the phase needs.
    before = {
        "tracing": sizes["traces.jsonl"] // 2,
        "re-evaluating": sizes["traces.jsonl"] + sizes["records.jsonl"] // 2,
        "summarising": sizes["traces.jsonl"] + sizes["records.jsonl"] + sizes["controls.jsonl"],
    }[phase]
    out = tmpfs / "run"
    filler = _fill(tmpfs, 2 * PAGE + before)
    stopped = _run(tiny_r1_dir, *args, "--out", str(out))
    assert stopped.exit_code == 2, stopped.output
    line = stopped.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {out}: cannot write "), line
    assert "No space left on device" in line and "Traceback" not in stopped.output
    _complete_lines(out)
    filler.unlink()
    resumed = _run(tiny_r1_dir, *args, "--out", str(out))
    assert resumed.exit_code == 0, resumed.output
    for name in ("traces.jsonl", "records.jsonl", "controls.jsonl"):
        rows = [json.loads(x) for x in (out / name).read_text().splitlines()]
        expected = [json.loads(x) for x in (whole / name).read_text().splitlines()]
        key = lambda r: (r["problem_id"], r["sample"], r.get("threshold", -1))  # noqa: E731
        assert len({key(r) for r in rows}) == len(rows) == len(expected), name
        if name == "traces.jsonl":
            assert {key(r): r["output_ids"] for r in rows} == {
                key(r): r["output_ids"] for r in expected
            }
        else:
            pick = lambda r: {f: r[f] for f in COMPARED}  # noqa: E731
            assert {key(r): pick(r) for r in rows} == {key(r): pick(r) for r in expected}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["thresholds"] == json.loads((whole / "summary.json").read_text())["thresholds"]


def test_bench_scorers_cache_on_a_full_disk_keeps_whole_rows(tmpfs: Path) -> None:
    """`bench scorers --run`'s cache: a failed append leaves the file and its memory copy as
    they were, and a later append, once space is freed, is read back whole."""
    from stepprune.bench.run_scorers import SCORES_KIND, BenchCache

    out = tmpfs / "run"
    out.mkdir()
    cache = BenchCache(out)
    row = {"kind": SCORES_KIND, "problem_id": "a", "sample": 0, "scorer": "s"}
    cache.append([{**row, "importances": [0.5] * 10}])
    filler = _fill(tmpfs, PAGE // 4)
    with pytest.raises(RunFolderError, match=f"^{out}: cannot write bench_scorers.jsonl"):
        cache.append([{**row, "scorer": f"s{i}", "importances": [0.25] * 2000} for i in range(3)])
    _complete_lines(out)
    assert set(BenchCache(out).scores) == {("a", 0, "s")}
    filler.unlink()
    cache.append([{**row, "scorer": "t", "importances": [1.0]}])
    assert set(BenchCache(out).scores) == {("a", 0, "s"), ("a", 0, "t")}
