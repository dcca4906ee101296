"""A run killed with SIGKILL at any point and resumed ends with the uninterrupted run's records."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import DATA
from tests.processes import (
    ForkServer,
    alive,
    descendants,
    end_group,
    invoke,
    kill_all,
    pid_alive,
    wait_for,
)

pytestmark = pytest.mark.e2e

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _args(model: Path, out: Path, dataset: str) -> list[str]:
    """``stepprune`` ARGS of the run (three sampled problems, two samples, three thresholds)."""
    return [
        "run", "--model", str(model), "--dataset", dataset, "--limit", "3", "--samples", "2",
        "--thresholds", "0,0.2,0.5", "--max-new-tokens", "24", "--answer-max-tokens", "3",
        "--device", "cpu", "--out", str(out),
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


def _run_killed(server: ForkServer, args: list[str], work: Path, watch: Path, after: int) -> None:
    """Start the run and SIGKILL it once ``watch`` holds ``after`` lines (or a partial one);
    then nothing it started (the grading worker) may survive it."""
    work.mkdir()
    pid = server.spawn(args, work, ENV)
    below = []
    try:
        deadline = time.monotonic() + 120
        while pid_alive(pid) and time.monotonic() < deadline:
            if _lines(watch) >= after:
                below = descendants(pid)
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        assert wait_for(lambda: not pid_alive(pid), timeout=30)
        survivors = lambda: [p for p in below if alive(p)]  # noqa: E731
        assert wait_for(lambda: not survivors(), timeout=5), f"left running: {survivors()}"
    finally:
        end_group(pid, timeout=0)
        kill_all(below)


def _run(server: ForkServer, args: list[str], work: Path) -> None:
    work.mkdir()
    done = invoke(server, args, work, ENV, timeout=600)
    assert done.code == 0 and not done.leftover, done.stderr[-3000:]


@pytest.mark.skipif(not (DATA / "aime24.jsonl").exists(), reason="shared data missing")
def test_resume_after_kills_matches_an_uninterrupted_run(
    tiny_r1_dir: Path, tmp_path: Path, fork_server: ForkServer
) -> None:
    dataset = str(DATA / "aime24.jsonl")  # the generation path: sampled traces
    reference, out = tmp_path / "reference", tmp_path / "killed"
    args = _args(tiny_r1_dir, out, dataset)
    kill_points = [
        ("config.json", 1),
        ("traces.jsonl", 1),
        ("records.jsonl", 1),
        ("traces.jsonl", 3),
        ("controls.jsonl", 1),
        ("records.jsonl", 12),
    ]
    left = []
    # Each run is a child of one interpreter that imported stepprune once (3-5 s a run less).
    _run(fork_server, _args(tiny_r1_dir, reference, dataset), tmp_path / "reference-run")
    expected = _records(reference)
    assert len(expected) == 3 * 2 * 3 * 2  # problems x samples x thresholds x (scorer, control)
    for number, (watch, after) in enumerate(kill_points):
        _run_killed(fork_server, args, tmp_path / f"kill-{number}", out / watch, after)
        left.append(_lines(out / "records.jsonl") + _lines(out / "controls.jsonl"))
    # The kills did interrupt work: before any record, and between records.
    assert left[0] == 0 and any(0 < n < len(expected) for n in left)
    _run(fork_server, args, tmp_path / "resumed")
    assert _records(out) == expected
    traces = (out / "traces.jsonl").read_text().splitlines()
    assert len(traces) == len(
        {(json.loads(t)["problem_id"], json.loads(t)["sample"]) for t in traces}
    )
