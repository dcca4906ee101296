"""Traces made elsewhere: a dataset line with ``prompt_ids`` and ``output_ids`` is segmented,
scored and pruned as is, on the tiny Qwen2 with the real R1-distill tokenizer; ids that cannot
be this model's are refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepprune.cli import app
from stepprune.models import ChatFormat
from stepprune.problems import DatasetError, load_jsonl

runner = CliRunner()
REASONING = "First, 2 + 3 = 5.\n\nThen 5 * 4 = 20.\n\nCheck: 20 / 4 = 5, fine."


def _trace_ids(tokenizer, problem: str) -> tuple[list[int], list[int]]:
    fmt = ChatFormat.from_tokenizer(tokenizer)
    prompt = fmt.prompt_ids(problem)
    output = fmt.encode(f"{REASONING}\n</think>\n\nThe answer is \\boxed{{20}}.")
    return prompt, output + [tokenizer.eos_token_id]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(model: Path, dataset: Path, out: Path, *extra: str):
    args = [
        "run", "--model", str(model), "--dataset", str(dataset), "--device", "cpu",
        "--thresholds", "0,0.5", "--answer-max-tokens", "3", "--out", str(out), *extra,
    ]  # fmt: skip
    return runner.invoke(app, args)


@pytest.mark.e2e
def test_a_brought_trace_is_scored_and_pruned_as_is(
    tiny_r1_dir, tiny_r1_tokenizer, tmp_path
) -> None:
    prompt, output = _trace_ids(tiny_r1_tokenizer, "What is (2 + 3) * 4?")
    row = {"id": "p1", "problem": "What is (2 + 3) * 4?", "answer": "20"}
    dataset = _write(tmp_path / "d.jsonl", [{**row, "prompt_ids": prompt, "output_ids": output}])
    result = _run(tiny_r1_dir, dataset, tmp_path / "run")
    assert result.exit_code == 0, result.output
    trace = json.loads((tmp_path / "run" / "traces.jsonl").read_text())
    assert trace["prompt_ids"] == prompt and trace["output_ids"] == output  # nothing generated
    assert not trace["teacher_forced"] and trace["original_answer"].endswith("\\boxed{20}.")
    assert [s["text"].strip() for s in trace["steps"]] == REASONING.split("\n\n")
    records = [
        json.loads(x) for x in (tmp_path / "run" / "records.jsonl").read_text().split("\n")[:-1]
    ]
    assert {r["num_steps"] for r in records} == {3}
    assert [r["num_kept_steps"] for r in records] == [3, 2]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("vocabulary", "output_ids[2] = 999999 is outside the model's vocabulary"),
        ("template", "prompt_ids do not end with this model's chat template"),
    ],
)
def test_ids_that_are_not_this_models_are_refused_before_writing(
    change: str, message: str, tiny_r1_dir, tiny_r1_tokenizer, tmp_path
) -> None:
    prompt, output = _trace_ids(tiny_r1_tokenizer, "What is 2 + 2?")
    if change == "vocabulary":
        output[2] = 999_999
    else:  # a plain "Question: ... Answer:" prompt, not the R1 template
        prompt = tiny_r1_tokenizer.encode(
            "Question: What is 2 + 2?\nAnswer:", add_special_tokens=False
        )
    row = {"id": "p1", "problem": "What is 2 + 2?", "answer": "4"}
    dataset = _write(tmp_path / "d.jsonl", [{**row, "prompt_ids": prompt, "output_ids": output}])
    result = _run(tiny_r1_dir, dataset, tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "'p1'" in result.output
    assert not (tmp_path / "run" / "config.json").exists()
    assert not (tmp_path / "run" / "traces.jsonl").exists()


@pytest.mark.e2e
def test_a_brought_trace_takes_one_sample_and_no_online_mode(
    tiny_r1_dir, tiny_r1_tokenizer, tmp_path
):
    prompt, output = _trace_ids(tiny_r1_tokenizer, "What is 2 + 2?")
    row = {"id": "p1", "problem": "What is 2 + 2?", "answer": "4"}
    dataset = _write(tmp_path / "d.jsonl", [{**row, "prompt_ids": prompt, "output_ids": output}])
    for extra in (["--samples", "2"], ["--mode", "online"]):
        result = _run(tiny_r1_dir, dataset, tmp_path / "run", *extra)
        assert result.exit_code == 2 and "brings its trace" in result.output, result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"prompt_ids": [1, 2]}, "field 'prompt_ids' is given without 'output_ids'"),
        ({"prompt_ids": [1], "output_ids": "12"}, "field 'output_ids' must be a non-empty list"),
        ({"prompt_ids": [1, -2], "output_ids": [3]}, "field 'prompt_ids' must be a non-empty"),
        ({"prompt_ids": [1], "output_ids": [], "reasoning": "x"}, "field 'output_ids' must be"),
        ({"prompt_ids": [1], "output_ids": [2], "reasoning": "x"}, "either 'reasoning' or"),
    ],
)
def test_bad_ids_name_file_line_and_field(extra: dict, message: str, tmp_path) -> None:
    row = {"id": "p1", "problem": "What is 2 + 2?", "answer": "4", **extra}
    path = _write(tmp_path / "d.jsonl", [row])
    with pytest.raises(DatasetError, match="d.jsonl, line 1") as error:
        load_jsonl(path)
    assert message in str(error.value)
