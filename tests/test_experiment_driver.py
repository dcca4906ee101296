"""``Experiment`` driven directly (no CLI, no subprocess): a tiny random model, the scripted
engine of ``tests/plugins`` beside the driver, the local pool. Where decoding happens is
decided once, from the engine's location."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

import tests.plugins.scripted_engine as scripted
from stepprune.config import RunConfig
from stepprune.experiment import Experiment

QUIET = Console(quiet=True)


@pytest.fixture
def problems(tmp_path: Path) -> Path:
    path = tmp_path / "problems.jsonl"
    rows = [{"id": f"p{i}", "problem": f"What is 3 + {i}?", "answer": "7"} for i in range(3)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[scripted.ScriptedEngine]:
    """Every scripted engine the run opens."""
    engines: list[scripted.ScriptedEngine] = []
    original = scripted.ScriptedEngineConfig.open

    def record(self, view, seed):
        engines.append(original(self, view, seed))
        return engines[-1]

    monkeypatch.setattr(scripted.ScriptedEngineConfig, "open", record)
    return engines


def _config(model: Path, data: Path, out: Path, **settings) -> RunConfig:
    settings = {"thresholds": [0.0, 0.5], **settings}
    return RunConfig.from_flat(
        model=str(model), device="cpu", dataset=str(data), engine="scripted", scorer="length",
        answer_max_tokens=4, out=str(out), **settings,
    )  # fmt: skip


def test_a_driver_engine_generates_every_trace_and_answers_text_mode_in_batches(
    tiny_r1_dir: Path, problems: Path, tmp_path: Path, opened
) -> None:
    summary = Experiment(_config(tiny_r1_dir, problems, tmp_path / "run"), QUIET, QUIET).run()
    (engine,) = opened
    assert engine.calls == {"sample": 1, "greedy": 1}  # one batch for traces, one for answers
    assert summary.num_problems == 3 and summary.accuracy_at(0.0) == 1.0
    records = (tmp_path / "run" / "records.jsonl").read_text().splitlines()
    assert len(records) == 3 * 2 and all('"engine": "scripted"' in r for r in records)


def test_a_finished_folder_opens_no_engine_and_kv_answers_on_the_workers(
    tiny_r1_dir: Path, problems: Path, tmp_path: Path, opened
) -> None:
    out = tmp_path / "run"
    Experiment(_config(tiny_r1_dir, problems, out, mode="kv"), QUIET, QUIET).run()
    (engine,) = opened
    assert engine.calls == {"sample": 1, "greedy": 0}  # kv answers from the cache, not the engine
    before = (out / "records.jsonl").read_text()
    Experiment(_config(tiny_r1_dir, problems, out, mode="kv"), QUIET, QUIET).run()
    assert len(opened) == 1 and (out / "records.jsonl").read_text() == before
    # Another threshold on the traces made: kv needs no engine, none is started.
    more = _config(tiny_r1_dir, problems, out, mode="kv", thresholds=[0.0, 0.3, 0.5])
    Experiment(more, QUIET, QUIET).run()
    assert len(opened) == 1
    assert len((out / "records.jsonl").read_text().splitlines()) == 3 * 3
