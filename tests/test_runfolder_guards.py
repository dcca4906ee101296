"""Run-folder guards: a run folder holds one experiment, one writer at a time, and a bad input
is refused with one line before anything is written.

- An edited dataset (answer or problem) is refused, the folder untouched; the same file by
  another path spelling is the same dataset.
- Two `stepprune run` at once on one folder: one is refused, the other's files are those of a
  run alone.
- A prompt longer than the model's context is refused before generation.
- A failed start leaves no config.json; options that can be checked without loading the model
  are refused before any file is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepprune.cli import app
from stepprune.schema import Problem
from stepprune.session import Session
from tests.conftest import tiny_model
from tests.processes import ForkServer, invoke

runner = CliRunner()

PROBLEMS = [
    {
        "id": "a",
        "problem": "What is 2 + 3?",
        "answer": "5",
        "reasoning": "First, 2 + 3 = 5.\n\nThe sky is blue today, which does not matter.\n\n"
        "So the sum is 5.",
        "final": "The answer is \\boxed{5}.",
    },
    {
        "id": "b",
        "problem": "What is 4 * 6?",
        "answer": "24",
        "reasoning": "Four times six is 24.\n\nBirds can fly over the hills.\n\nSo it is 24.",
        "final": "The answer is \\boxed{24}.",
    },
]


def _write(path: Path, problems: list[dict]) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in problems), encoding="utf-8")
    return path


def _run(model: Path, *args: str):
    base = ["run", "--model", str(model), "--device", "cpu", "--thresholds", "0,0.5"]
    return runner.invoke(app, [*base, "--answer-max-tokens", "4", *args])


def _hashes(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (hidden ones included) by its content hash."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _error_line(result) -> str:
    """The one line of a refusal: the last line of stderr, and no traceback anywhere."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ")
    return lines[-1]


# -- an edited dataset -----------------------------------------------------------------------------


@pytest.mark.e2e
def test_edited_answer_or_problem_is_refused_and_the_folder_is_untouched(
    tiny_r1_dir: Path, tmp_path: Path
) -> None:
    data, out = _write(tmp_path / "x.jsonl", PROBLEMS), tmp_path / "run"
    first = _run(tiny_r1_dir, "--dataset", str(data), "--out", str(out))
    assert first.exit_code == 0, first.output
    before = _hashes(out)

    _write(data, [PROBLEMS[0], {**PROBLEMS[1], "answer": "25"}])
    line = _error_line(_run(tiny_r1_dir, "--dataset", str(data), "--out", str(out)))
    assert "'b'" in line and "'25'" in line and "dataset changed" in line
    assert _hashes(out) == before

    _write(data, [{**PROBLEMS[0], "problem": "What is 2 + 4?"}, PROBLEMS[1]])
    line = _error_line(_run(tiny_r1_dir, "--dataset", str(data), "--out", str(out)))
    assert "'a'" in line and "dataset changed" in line
    assert _hashes(out) == before


@pytest.mark.e2e
def test_the_same_file_by_another_path_is_the_same_dataset(
    tiny_r1_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, out = _write(tmp_path / "x.jsonl", PROBLEMS), tmp_path / "run"
    first = _run(tiny_r1_dir, "--dataset", str(data.resolve()), "--out", str(out))
    assert first.exit_code == 0, first.output
    work = {n: (out / n).read_bytes() for n in ("traces.jsonl", "records.jsonl", "controls.jsonl")}

    monkeypatch.chdir(tmp_path)
    again = _run(tiny_r1_dir, "--dataset", "./x.jsonl", "--out", str(out))
    assert again.exit_code == 0, again.output
    assert "nothing left to do" in again.stderr
    assert {n: (out / n).read_bytes() for n in work} == work


# -- two runs on one folder at once ----------------------------------------------------------------


def _args(model: Path, out: Path) -> list[str]:
    return [
        "run", "--model", str(model), "--limit", "2", "--samples", "2", "--thresholds", "0,0.5",
        "--answer-max-tokens", "3", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip


def _canonical(folder: Path, *names: str) -> list[str]:
    lines = [line for n in names for line in (folder / n).read_text().splitlines()]
    return sorted(json.dumps(json.loads(line), sort_keys=True) for line in lines)


@pytest.mark.e2e
def test_of_two_runs_at_once_on_one_folder_one_is_refused_and_one_runs_as_if_alone(
    tiny_r1_dir: Path, tmp_path: Path, fork_server: ForkServer
) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    alone, shared = tmp_path / "alone", tmp_path / "shared"
    works = [tmp_path / name for name in ("alone-run", "first", "second")]
    for work in works:
        work.mkdir()
    # Children of one interpreter that imported stepprune once (the fork server).
    with ThreadPoolExecutor(2) as pool:
        done = invoke(fork_server, _args(tiny_r1_dir, alone), works[0], env, timeout=300)
        assert done.code == 0, done.stderr[-3000:]
        # Both started at once: whichever opens the folder first holds it.
        args = _args(tiny_r1_dir, shared)
        both = [pool.submit(invoke, fork_server, args, work, env, 300) for work in works[1:]]
        results = [future.result() for future in both]
    codes = [r.code for r in results]
    assert sorted(codes) == [0, 2], [r.stderr[-2000:] for r in results]
    assert not any(r.leftover for r in results)
    refused = results[codes.index(2)].stderr.strip().splitlines()
    assert len(refused) == 1, refused
    assert str(shared) in refused[0] and "another stepprune run is writing" in refused[0]
    for names in (("traces.jsonl",), ("records.jsonl", "controls.jsonl")):
        assert _canonical(shared, *names) == _canonical(alone, *names)


# -- a prompt longer than the model's context ------------------------------------------------------


@pytest.mark.e2e
def test_prompt_longer_than_the_context_is_refused_before_generation(
    tiny_r1_dir: Path, tmp_path: Path
) -> None:
    long = {"id": "long", "problem": "1 + " * 3000 + "1 = ?", "answer": "3001"}
    data, out = _write(tmp_path / "long.jsonl", [long]), tmp_path / "run"
    result = _run(tiny_r1_dir, "--dataset", str(data), "--max-new-tokens", "8", "--out", str(out))
    line = _error_line(result)
    assert "'long'" in line and "context of 4096 tokens" in line
    assert not (out / "config.json").exists() and not (out / "traces.jsonl").exists()


def test_check_lengths_refuses_what_cannot_fit_and_warns_of_a_budget_that_does_not(
    r1_tokenizer,
) -> None:
    model = tiny_model("qwen2", max_position_embeddings=256, eos_token_id=r1_tokenizer.eos_token_id)
    session = Session(model, r1_tokenizer)
    short = Problem("s", "What is 1 + 1?", "2")
    assert session.context_limit == 256
    assert session.check_lengths([short], 64) is None
    warning = session.check_lengths([short], 1000)  # fits, but its budget does not
    assert warning and "context of 256 tokens" in warning
    with pytest.raises(ValueError, match="'t'.*context of 256 tokens"):
        session.check_lengths([Problem("t", "Q?", "2", reasoning="so " * 400, final="2")], 8)
    with pytest.raises(ValueError, match="'g'.*context of 256 tokens"):
        session.check_lengths([Problem("g", "1 + " * 300, "2")], 8)


# -- checks before anything is written or loaded ---------------------------------------------------


@pytest.mark.e2e
def test_a_failed_start_does_not_poison_the_folder(tiny_r1_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    failed = _run(Path("bundld"), "--limit", "1", "--out", str(out))
    assert "bundld" in _error_line(failed)
    assert not (out / "config.json").exists()
    fixed = _run(tiny_r1_dir, "--limit", "1", "--out", str(out))
    assert fixed.exit_code == 0, fixed.output
    assert json.loads((out / "config.json").read_text())["config"]["model"] == str(tiny_r1_dir)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--mode", "online", "--interval", "-1"],
            "--interval -1: mode 'online:interval=-1': interval=-1 is outside the allowed range",
        ),
        (
            ["--mode", "online", "--budget", "-5"],
            "--budget -5: mode 'online:budget=-5': budget=-5 is outside the allowed range",
        ),
        (["--interval", "-1"], "--interval"),
        (["--scorer", "attention:layers=99"], "layers [99] outside 0..2"),
        (["--scorer", "attention:layers=0+3"], "layers [3] outside 0..2 (the model has 3 layers)"),
        (
            ["--mode", "online", "--scorer", "attention:query=probe,layers=1+5"],
            "layers [5] outside 0..2 (the model has 3 full-attention layers)",
        ),
    ],
)
def test_options_are_refused_before_any_file_is_written(
    args: list[str], message: str, tiny_r1_dir: Path, tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh"
    line = _error_line(_run(tiny_r1_dir, "--limit", "1", *args, "--out", str(fresh)))
    assert message in line
    assert not fresh.exists()


@pytest.mark.e2e
def test_bad_scorer_on_an_existing_folder_changes_nothing(
    tiny_r1_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert _run(tiny_r1_dir, "--limit", "1", "--out", str(out)).exit_code == 0
    before = _hashes(out)
    line = _error_line(
        _run(tiny_r1_dir, "--limit", "1", "--scorer", "attention:layers=7", "--out", str(out))
    )
    assert "layers [7]" in line and "--scorer" in line
    assert _hashes(out) == before
