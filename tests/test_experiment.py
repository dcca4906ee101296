"""End to end through the CLI on a tiny random Qwen2 with the real R1-distill tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepprune.cli import app
from stepprune.policies import POLICIES
from tests.conftest import DATA

runner = CliRunner()
OUTPUTS = ["config.json", "traces.jsonl", "records.jsonl", "summary.json", "results.md"]


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["run", "--device", "cpu", "--answer-max-tokens", "4", *args])
    return result.exit_code, result.output


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.e2e
def test_planted_run_writes_everything_and_resumes(
    tiny_r1_dir: Path, tiny_r1_tokenizer, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["--model", str(tiny_r1_dir), "--limit", "3", "--samples", "2", "--out", str(out)]
    code, output = _run(*args, "--thresholds", "0,0.5")
    assert code == 0, output
    for name in [*OUTPUTS, "importance.png"]:
        assert (out / name).stat().st_size > 0, name
    traces, main = _lines(out / "traces.jsonl"), _lines(out / "records.jsonl")
    control = _lines(out / "controls.jsonl")
    # problems x samples x thresholds, for the scorer and, in its own file, its random control
    assert len(traces) == 3 * 2 and len(main) == len(control) == 3 * 2 * 2
    assert all(r["scorer"].startswith("attention") for r in main)
    assert all(r["scorer"].startswith("random-control") for r in control)
    by_key = {(r["problem_id"], r["sample"], r["threshold"]): r for r in main}
    for r in control:  # the control keeps as many steps as the scorer, chosen at random
        assert (
            r["num_kept_steps"]
            == by_key[(r["problem_id"], r["sample"], r["threshold"])]["num_kept_steps"]
        )
    for trace in traces:
        ids = trace["prompt_ids"] + trace["output_ids"]
        assert trace["steps"] and abs(sum(s["importance"] for s in trace["steps"]) - 1) < 1e-6
        assert all(s["end"] <= trace["reasoning_end"] for s in trace["steps"])
        assert ids[trace["reasoning_end"]] == tiny_r1_tokenizer.convert_tokens_to_ids("</think>")
        assert {s["label"] for s in trace["steps"]} == {"necessary", "planted"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_problems"] == 3 and set(summary["thresholds"]) == {"0.0", "0.5"}
    assert summary["thresholds"]["0.0"]["total"] == 6
    assert summary["thresholds"]["0.0"]["avg_steps_kept_pct"] == 100.0
    assert summary["thresholds"]["0.5"]["avg_steps_kept_pct"] < 100.0
    assert summary["random_control"]["0.5"]["total"] == 6
    assert "| Threshold | Accuracy | Steps Kept | Avg Length |" in (out / "results.md").read_text()

    # The same command again does no new work; an extra threshold adds only its records.
    code, output = _run(*args, "--thresholds", "0,0.5")
    assert code == 0, output
    assert len(_lines(out / "records.jsonl")) == 12 and len(_lines(out / "controls.jsonl")) == 12
    assert len(_lines(out / "traces.jsonl")) == 6
    code, output = _run(*args, "--thresholds", "0,0.3,0.5")
    assert code == 0, output
    records = _lines(out / "records.jsonl") + _lines(out / "controls.jsonl")
    assert len(records) == 36 and len(_lines(out / "traces.jsonl")) == 6
    keys = {(r["problem_id"], r["sample"], r["threshold"], r["scorer"]) for r in records}
    assert len(keys) == 36

    # Another scorer reuses the traces: no generation, its scores go to scores.jsonl.
    code, output = _run(*args, "--thresholds", "0,0.5", "--scorer", "length", "--no-control")
    assert code == 0, output
    assert len(_lines(out / "traces.jsonl")) == 6 and len(_lines(out / "scores.jsonl")) == 6
    assert len([r for r in _lines(out / "records.jsonl") if r["scorer"] == "length"]) == 12
    assert json.loads((out / "summary.json").read_text())["scorer"] == "length"


@pytest.mark.e2e
@pytest.mark.skipif(not (DATA / "aime24.jsonl").exists(), reason="shared data missing")
def test_generation_path_reports_truncation(tiny_r1_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    code, output = _run(
        "--model", str(tiny_r1_dir), "--dataset", str(DATA / "aime24.jsonl"), "--limit", "1",
        "--samples", "2", "--max-new-tokens", "8", "--out", str(out),
    )  # fmt: skip
    assert code == 0, output
    assert "truncated" in output
    traces = _lines(out / "traces.jsonl")
    assert len(traces) == 2 and all(t["truncated"] for t in traces)
    assert all(len(t["output_ids"]) == 8 for t in traces)
    assert json.loads((out / "summary.json").read_text())["truncation_rate"] == 1.0
    assert all(r["trace_truncated"] for r in _lines(out / "records.jsonl"))


@pytest.mark.e2e
def test_changing_the_model_of_a_run_folder_is_refused(tiny_r1_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, output = _run("--model", str(tiny_r1_dir), "--limit", "1", "--out", str(out))
    assert code == 0, output
    before = (out / "records.jsonl").read_text()
    code, output = _run("--model", "bundled", "--limit", "1", "--out", str(out))
    assert code == 2 and "use another --out" in output
    assert (out / "records.jsonl").read_text() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "missing.jsonl"], "missing.jsonl: no such file"),
        (["--dataset", "nope"], "nope"),
        (["--thresholds", "0,1.5"], "1.5 is outside [0, 1)"),
        (["--thresholds", "0,x"], "expected comma-separated numbers"),
        (["--scorer", "magic"], "unknown scorer 'magic'"),
        (["--scorer", "attention:agg=max"], "agg='max'"),
        (["--samples", "0"], "--samples must be >= 1"),
        (["--model", "missing.gguf"], "missing.gguf: no such GGUF file"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], message: str, tmp_path: Path) -> None:
    code, output = _run(*args, "--out", str(tmp_path / "out"))
    assert code != 0
    assert message in output
    assert "Traceback" not in output


def test_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"id": "a", "problem": "p", "answer": "1"}\n{"id": "b", "problem": \n')
    code, output = _run("--dataset", str(data), "--out", str(tmp_path / "out"))
    assert code == 2 and "bad.jsonl, line 2: invalid JSON" in output


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("scorer", "policy", "segmenter"),
    [
        ("ablation", "adaptive", "markers"),
        ("attention:query=probe,heads=receiver,receivers=2,sink=exclude", "percentile", "sentence"),
        ("random:seed=3", "percentile", "paragraph"),
    ],
)
def test_run_accepts_every_kind_of_scorer(
    scorer: str, policy: str, segmenter: str, tiny_r1_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    code, output = _run(
        "--model", str(tiny_r1_dir), "--limit", "2", "--thresholds", "0,0.5", "--out", str(out),
        "--scorer", scorer, "--policy", policy, "--segmenter", segmenter, "--no-control",
    )  # fmt: skip
    assert code == 0, output
    records = _lines(out / "records.jsonl")
    assert len(records) == 4
    spec = records[0]["scorer"]
    assert spec.split(":")[0] == scorer.split(":")[0] and {r["scorer"] for r in records} == {spec}
    assert {r["policy"] for r in records} == {POLICIES.build(policy).spec}  # canonical spec
    traces = _lines(out / "traces.jsonl")
    assert all(abs(sum(s["importance"] for s in t["steps"]) - 1) < 1e-6 for t in traces)


@pytest.mark.e2e
def test_another_dtype_is_another_experiment(tiny_r1_dir: Path, tmp_path: Path) -> None:
    # bfloat16 and float32 traces differ: one folder never mixes them (dtype is identity).
    out = tmp_path / "run"
    code, output = _run("--model", str(tiny_r1_dir), "--limit", "1", "--out", str(out))
    assert code == 0, output
    identity = json.loads((out / "config.json").read_text())["identity"]
    assert identity["dtype"] == "float32" and identity["engine"] == "hf"
    before = (out / "records.jsonl").read_text()
    code, output = _run(
        "--model", str(tiny_r1_dir), "--limit", "1", "--dtype", "bfloat16", "--out", str(out)
    )  # fmt: skip
    assert code == 2 and "dtype='float32', not 'bfloat16'" in output
    assert (out / "records.jsonl").read_text() == before
