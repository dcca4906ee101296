"""`stepprune bench generate`: its checks before any engine runs, its scratch folders, and the
workers part (--workers 1 vs 2) with a stand-in run. Both engines end to end:
test_engine_vllm.py, where the bundled model's de-quantised copy is already made."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.extras import require_ray


def test_negative_workers_units_are_refused_before_any_engine_runs(monkeypatch) -> None:
    """`--workers-units -1` used to decode with both engines for minutes before refusing."""
    import stepprune.bench.generate as generate

    def never(*args, **kwargs):
        raise AssertionError("the engines ran")

    monkeypatch.setattr(generate, "run_engines", never)
    with pytest.raises(ValueError, match="--workers-units must be >= 0"):
        generate.run_generate_bench(workers_units=-1)


def test_run_folders_of_a_killed_bench_are_removed_by_the_next(tmp_path, monkeypatch) -> None:
    import tempfile

    import stepprune.bench.generate as generate

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free: the bench that made the folder is gone
    stale = tmp_path / f"{generate.SCRATCH_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{generate.SCRATCH_PREFIX}{os.getpid()}-abc"
    for folder in (stale, live):
        (folder / "w1").mkdir(parents=True)
    generate._sweep_scratch()
    assert not stale.exists() and live.exists()


def test_the_workers_part_times_one_and_two_workers_with_the_bench_settings(
    monkeypatch, tmp_path
) -> None:
    """The same run with --workers 1 and 2, each timed, and their ratio; its traces stop at
    the bench's --max-new-tokens (they used the run's default, 32768 tokens: to the end
    token, whatever the option)."""
    require_ray()  # a --workers 2 config needs it
    import tempfile

    import stepprune.bench.generate as generate
    import stepprune.experiment as experiment

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    configs = []
    monkeypatch.setattr(experiment, "run_experiment", lambda config, *_: configs.append(config))
    seconds = iter([30.04, 40.0])  # the runs' wall seconds, as the bench's timer reports them
    monkeypatch.setattr(generate, "_timed", lambda fn: (fn(), next(seconds)))
    result = generate.run_workers("bundled", "cpu", "float32", units=3, max_new_tokens=12)
    assert [c.placement.workers for c in configs] == [1, 2]
    assert {(c.sampling.max_new_tokens, c.data.limit) for c in configs} == {(12, 3)}
    assert len({c.out for c in configs}) == 2  # each in a fresh folder
    assert result == {
        "workers_units": 3, "workers_1_s": 30.0, "workers_2_s": 40.0, "workers_speedup": 0.75
    }  # fmt: skip
