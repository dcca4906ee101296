"""`--workers 2` spreads the transformers stages over two Ray actors (a local Ray instance the
run starts and stops): the records are those of a run in one process, the driver alone writes
the folder, and no Ray process outlives the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.extras import require_ray
from tests.processes import alive, cmdline, descendants, kill_all, stop, wait_for

# vLLM and Ray start servers and look for their processes: one such test at a time.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("engines")]

PROBLEMS = [f"What is {a} + {2 * a + 1}?" for a in range(1, 6)]
COMPARED = ["answer_text", "prediction", "correct", "kept_steps", "tokens_kept", "context_tokens"]


def _dataset(path: Path) -> Path:
    rows = [{"id": f"q{i}", "problem": p, "answer": str(3 * i + 2)} for i, p in enumerate(PROBLEMS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(model: Path, dataset: Path, out: Path, *extra: str) -> None:
    command = [
        sys.executable, "-m", "stepprune", "run", "--model", str(model), "--dataset",
        str(dataset), "--samples", "2", "--max-new-tokens", "24", "--answer-max-tokens", "6",
        "--thresholds", "0,0.5", "--device", "cpu", "--out", str(out), *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def _rows(out: Path, name: str) -> dict[tuple, dict]:
    rows = [json.loads(x) for x in (out / name).read_text().splitlines()]
    key = ("problem_id", "sample", "threshold", "scorer")
    keyed: dict[tuple, dict] = {}
    for row in rows:
        k = tuple(row[f] for f in key) if "threshold" in row else (row["problem_id"], row["sample"])
        assert k not in keyed, f"{name}: {k} written twice"
        keyed[k] = row
    return keyed


def _ray_processes() -> set[int]:
    names = ("raylet", "gcs_server", "ray::", "default_worker.py")
    return {
        int(pid)
        for pid in os.listdir("/proc")
        if pid.isdigit() and any(n in cmdline(int(pid)) for n in names)
    }


def test_two_workers_give_the_records_of_one_process(tiny_r1_dir: Path, tmp_path: Path) -> None:
    require_ray()
    dataset = _dataset(tmp_path / "q.jsonl")
    before = _ray_processes()
    _run(tiny_r1_dir, dataset, tmp_path / "one")
    _run(tiny_r1_dir, dataset, tmp_path / "two", "--workers", "2")
    # The run stopped the Ray instance it started: its processes are gone within seconds (on a
    # loaded machine they may still be exiting when the run returns).
    assert wait_for(lambda: _ray_processes() <= before, timeout=60), _ray_processes() - before
    one, two = tmp_path / "one", tmp_path / "two"
    traces_one, traces_two = _rows(one, "traces.jsonl"), _rows(two, "traces.jsonl")
    assert len(traces_one) == len(PROBLEMS) * 2 and set(traces_one) == set(traces_two)
    for key, trace in traces_one.items():  # sampled traces: chunks of 8 units, whoever ran them
        assert trace["output_ids"] == traces_two[key]["output_ids"], key
        assert trace["steps"] == traces_two[key]["steps"], key
    for name in ("records.jsonl", "controls.jsonl"):
        a, b = _rows(one, name), _rows(two, name)
        assert set(a) == set(b) and len(a) == len(PROBLEMS) * 2 * 2
        for key in a:
            assert {f: a[key][f] for f in COMPARED} == {f: b[key][f] for f in COMPARED}, key


def test_kill_9_while_workers_load_leaves_no_ray_process(tiny_r1_dir, tmp_path) -> None:
    """Killed while its workers load their models (the longest phase before any trace): Ray's
    agents would outlive the driver on their own; the run's reaper takes them, and everything
    else Ray started. The re-run then finishes every unit once."""
    require_ray()
    dataset, out = _dataset(tmp_path / "q.jsonl"), tmp_path / "run"
    command = [
        sys.executable, "-m", "stepprune", "run", "--model", str(tiny_r1_dir), "--dataset",
        str(dataset), "--max-new-tokens", "24", "--answer-max-tokens", "6", "--thresholds",
        "0,0.5", "--device", "cpu", "--workers", "2", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with (tmp_path / "log").open("wb") as log:
        run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    below = []
    try:
        actors = lambda: [p for p in descendants(run.pid) if "RunnerActor" in cmdline(p[0])]  # noqa: E731
        assert wait_for(lambda: len(actors()) == 2, timeout=600, interval=0.1)
        below = descendants(run.pid)
        assert any("raylet" in cmdline(p[0]) for p in below)
        run.kill()
        run.wait()
        survivors = lambda: [cmdline(p[0])[:80] for p in below if alive(p)]  # noqa: E731
        assert wait_for(lambda: not survivors(), timeout=15), survivors()
    finally:
        stop(run)
        kill_all(below)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_rows(out, "traces.jsonl")) == len(PROBLEMS)
    assert len(_rows(out, "records.jsonl")) == len(PROBLEMS) * 2
