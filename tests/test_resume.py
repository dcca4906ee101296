"""A run killed with SIGKILL at any point and resumed ends with the uninterrupted run's records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DATA
from tests.processes import alive, descendants, kill_all, stop, wait_for

pytestmark = pytest.mark.e2e


def _command(model: Path, out: Path, dataset: str) -> list[str]:
    return [
        sys.executable, "-m", "stepprune", "run", "--model", str(model), "--dataset", dataset,
        "--limit", "3", "--samples", "2", "--thresholds", "0,0.2,0.5", "--max-new-tokens", "24",
        "--answer-max-tokens", "3", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def _records(out: Path) -> list[str]:
    """Records and control records of a run folder, sorted, as canonical JSON."""
    lines = [
        line
        for name in ("records.jsonl", "controls.jsonl")
        for line in (out / name).read_text().splitlines()
    ]
    return sorted(json.dumps(json.loads(line), sort_keys=True) for line in lines)


def _run_killed(command: list[str], out: Path, watch: str, after_lines: int) -> None:
    """Start the run and SIGKILL it once ``watch`` holds ``after_lines`` lines (or a partial
    one); then nothing it started (the grading worker) may survive it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # Output to a file: a surviving worker would hold a pipe open.
    with (out.parent / "killed.log").open("ab") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
    below = []
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if _lines(out / watch) >= after_lines:
                below = descendants(process.pid)
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        process.wait()
        survivors = lambda: [p for p in below if alive(p)]  # noqa: E731
        assert wait_for(lambda: not survivors(), timeout=5), f"left running: {survivors()}"
    finally:
        stop(process)
        kill_all(below)


@pytest.mark.skipif(not (DATA / "aime24.jsonl").exists(), reason="shared data missing")
def test_resume_after_kills_matches_an_uninterrupted_run(tiny_r1_dir: Path, tmp_path: Path) -> None:
    dataset = str(DATA / "aime24.jsonl")  # the generation path: sampled traces
    reference = tmp_path / "reference"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        _command(tiny_r1_dir, reference, dataset), env=env, check=True, capture_output=True
    )
    expected = _records(reference)
    assert len(expected) == 3 * 2 * 3 * 2  # problems x samples x thresholds x (scorer, control)

    out = tmp_path / "killed"
    command = _command(tiny_r1_dir, out, dataset)
    kill_points = [
        ("config.json", 1),
        ("traces.jsonl", 1),
        ("records.jsonl", 1),
        ("traces.jsonl", 3),
        ("controls.jsonl", 1),
        ("records.jsonl", 12),
    ]
    left = []
    for watch, after in kill_points:
        _run_killed(command, out, watch, after)
        left.append(_lines(out / "records.jsonl") + _lines(out / "controls.jsonl"))
    # The kills did interrupt work: before any record, and between records.
    assert left[0] == 0 and any(0 < n < len(expected) for n in left)
    subprocess.run(command, env=env, check=True, capture_output=True)
    assert _records(out) == expected
    traces = (out / "traces.jsonl").read_text().splitlines()
    assert len(traces) == len(
        {(json.loads(t)["problem_id"], json.loads(t)["sample"]) for t in traces}
    )
