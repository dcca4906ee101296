"""Tests of stepprune.problems: JSONL loading and its error messages, built-in datasets, specs."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from stepprune.planted import generate_planted
from stepprune.problems import (
    BUILTIN_DATASETS,
    DATA_DIR_ENV,
    DatasetError,
    dataset_name,
    load_jsonl,
    load_problems,
)
from stepprune.schema import Problem

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
requires_data = pytest.mark.skipif(
    not (DATA / "aime24.jsonl").is_file(), reason=f"benchmark data not found in {DATA}"
)

GOOD = {"id": "p1", "problem": "What is 1 + 1?", "answer": "2"}


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Write a JSONL file; dicts are dumped, strings written as they are (for broken lines)."""
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own $STEPPRUNE_DATA_DIR must not leak into the tests."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


# -- load_jsonl ------------------------------------------------------------------------------


def test_load_jsonl_reads_required_and_optional_fields(tmp_path: Path) -> None:
    traced = {
        **GOOD,
        "id": "p2",
        "reasoning": "First step is here.\n\nSecond step is here.",
        "final": "The answer is \\boxed{2}.",
        "step_labels": ["necessary", "planted"],
        "extra": "ignored",
    }
    path = write_lines(tmp_path / "mine.jsonl", [GOOD, traced])
    problems = load_jsonl(path)
    assert problems == [
        Problem(id="p1", problem="What is 1 + 1?", answer="2"),
        Problem(
            id="p2",
            problem="What is 1 + 1?",
            answer="2",
            reasoning=traced["reasoning"],
            final=traced["final"],
            step_labels=["necessary", "planted"],
        ),
    ]


def test_numbers_become_strings(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "nums.jsonl",
        [
            {"id": 7, "problem": "p", "answer": 34},
            {"id": 8, "problem": "q", "answer": 27.0},
            {"id": 9, "problem": "r", "answer": 0.5},
        ],
    )
    assert [(p.id, p.answer) for p in load_jsonl(path)] == [("7", "34"), ("8", "27"), ("9", "0.5")]


def test_blank_lines_are_skipped_and_line_numbers_count_them(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text(f"\n{json.dumps(GOOD)}\n   \n{{broken\n", encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        load_jsonl(path)
    assert f"{path}, line 4: invalid JSON" in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"
    with pytest.raises(DatasetError, match="no such file") as caught:
        load_jsonl(path)
    assert str(caught.value) == f"{path}: no such file"


def test_bad_json_names_file_line_and_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, '{"id": "p2", "problem": '])
    with pytest.raises(DatasetError) as caught:
        load_jsonl(path)
    message = str(caught.value)
    assert message.startswith(f"{path}, line 2: invalid JSON: ")
    assert "Expecting value" in message  # the JSON error itself
    assert "\n" not in message


@pytest.mark.parametrize("name", ["id", "problem", "answer"])
@pytest.mark.parametrize("how", ["missing", "empty", "blank", "null"])
def test_missing_or_empty_required_field(tmp_path: Path, name: str, how: str) -> None:
    record = dict(GOOD)
    if how == "missing":
        del record[name]
    else:
        record[name] = {"empty": "", "blank": "   ", "null": None}[how]
    path = write_lines(tmp_path / "fields.jsonl", [{**GOOD, "id": "first"}, record])
    with pytest.raises(DatasetError) as caught:
        load_jsonl(path)
    assert str(caught.value) == f"{path}, line 2: missing or empty field '{name}'"


def test_wrong_type_of_required_field(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "types.jsonl", [{**GOOD, "answer": [1, 2]}])
    with pytest.raises(DatasetError) as caught:
        load_jsonl(path)
    message = str(caught.value)
    assert f"{path}, line 1: field 'answer'" in message
    assert "[1, 2]" in message


@pytest.mark.parametrize(
    ("line", "shown"), [("[1, 2]", "list [1, 2]"), ('"text"', "str 'text'"), ("42", "int 42")]
)
def test_non_object_line(tmp_path: Path, line: str, shown: str) -> None:
    path = write_lines(tmp_path / "list.jsonl", [GOOD, line])
    with pytest.raises(DatasetError) as caught:
        load_jsonl(path)
    assert str(caught.value) == f"{path}, line 2: expected a JSON object, got {shown}"


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    other = {**GOOD, "id": "p9"}
    path = write_lines(tmp_path / "dup.jsonl", [GOOD, other, {**GOOD, "answer": "3"}])
    with pytest.raises(DatasetError) as caught:
        load_jsonl(path)
    assert str(caught.value) == f"{path}, line 3: duplicate id 'p1' (first on line 1)"


def test_number_and_string_ids_collide(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "dup.jsonl", [{**GOOD, "id": 5}, {**GOOD, "id": "5"}])
    with pytest.raises(DatasetError, match="line 2: duplicate id '5'"):
        load_jsonl(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no problems"):
        load_jsonl(path)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"reasoning": ""}, "field 'reasoning' must be a non-empty string"),
        ({"reasoning": 3}, "field 'reasoning' must be a non-empty string"),
        ({"final": "The answer is 2."}, "field 'final' is given without 'reasoning'"),
        ({"reasoning": "step one here", "final": 2}, "field 'final' must be a string"),
        ({"step_labels": ["planted"]}, "field 'step_labels' is given without 'reasoning'"),
        ({"reasoning": "one", "step_labels": "planted"}, "must be a list of strings"),
        (
            {"reasoning": "one\n\ntwo\n\nthree", "step_labels": ["necessary", "planted"]},
            "'step_labels' has 2 labels but 'reasoning' has 3 paragraphs",
        ),
    ],
)
def test_bad_optional_fields(tmp_path: Path, extra: dict[str, Any], expected: str) -> None:
    path = write_lines(tmp_path / "opt.jsonl", [{**GOOD, **extra}])
    with pytest.raises(DatasetError) as caught:
        load_jsonl(path)
    assert str(caught.value).startswith(f"{path}, line 1: ")
    assert expected in str(caught.value)


def test_null_optional_fields_are_absent(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "null.jsonl", [{**GOOD, "reasoning": None, "final": None, "step_labels": None}]
    )
    assert load_jsonl(path) == [Problem(id="p1", problem="What is 1 + 1?", answer="2")]


# -- built-in datasets -------------------------------------------------------------------------


def test_builtin_names_and_local_files() -> None:
    assert {name: info.filename for name, info in BUILTIN_DATASETS.items()} == {
        "aime24": "aime24.jsonl",
        "aime25": "aime25.jsonl",
        "math500": "math500.jsonl",
        "gsm8k": "gsm8k_test.jsonl",
        "amc23": "amc23.jsonl",
    }
    assert BUILTIN_DATASETS["gsm8k"].hub_id == "openai/gsm8k"
    assert BUILTIN_DATASETS["gsm8k"].config == "main"
    assert BUILTIN_DATASETS["gsm8k"].split == "test"


@requires_data
def test_aime24_from_shared_data() -> None:
    problems = load_problems("aime24", data_dir=DATA)
    assert len(problems) == 30
    assert (problems[0].id, problems[0].answer) == ("2024-I-1", "204")
    assert problems[0].reasoning is None


@requires_data
def test_gsm8k_reads_gsm8k_test_file() -> None:
    problems = load_problems("gsm8k", data_dir=DATA, limit=3)
    assert [p.id for p in problems] == ["gsm8k-test-0", "gsm8k-test-1", "gsm8k-test-2"]
    assert problems[0].answer == "18"


def test_gsm8k_name_maps_to_its_file(tmp_path: Path) -> None:
    write_lines(tmp_path / "gsm8k_test.jsonl", [GOOD])
    assert load_problems("gsm8k", data_dir=tmp_path) == load_jsonl(tmp_path / "gsm8k_test.jsonl")


def test_env_data_dir_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_lines(tmp_path / "amc23.jsonl", [GOOD, {**GOOD, "id": "p2"}])
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert [p.id for p in load_problems("amc23")] == ["p1", "p2"]


def test_explicit_data_dir_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "env").mkdir()
    (tmp_path / "arg").mkdir()
    write_lines(tmp_path / "env" / "aime25.jsonl", [{**GOOD, "id": "from-env"}])
    write_lines(tmp_path / "arg" / "aime25.jsonl", [{**GOOD, "id": "from-arg"}])
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert load_problems("aime25", data_dir=tmp_path / "arg")[0].id == "from-arg"


def test_errors_in_a_local_copy_name_its_file(tmp_path: Path) -> None:
    write_lines(tmp_path / "math500.jsonl", [{"id": "x", "problem": "p"}])
    with pytest.raises(DatasetError, match=r"math500\.jsonl, line 1: .*'answer'"):
        load_problems("math500", data_dir=tmp_path)


# -- hub fallback (faked: the tests never touch the network) -----------------------------------


def fake_datasets(monkeypatch: pytest.MonkeyPatch, load_dataset: Any) -> None:
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_hub_unreachable_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Couldn't reach 'HuggingFaceH4/aime_2024' on the Hub\nmore detail")

    fake_datasets(monkeypatch, unreachable)
    with pytest.raises(DatasetError) as caught:
        load_problems("aime24", data_dir=tmp_path)
    message = str(caught.value)
    assert message.startswith(f"dataset 'aime24': no local copy in {tmp_path} and the Hugging")
    assert "ConnectionError: Couldn't reach 'HuggingFaceH4/aime_2024'" in message
    assert message.endswith("pass --data-dir or a .jsonl path")
    assert "\n" not in message


def test_hub_without_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DatasetError) as caught:
        load_problems("math500")
    message = str(caught.value)
    assert "dataset 'math500': no local copy" in message
    assert "'datasets' package is not installed" in message
    assert "--data-dir" in message


def test_hub_rows_are_mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load_dataset(path: str, name: str | None = None, split: str | None = None) -> list:
        calls.append((path, name, split))
        return [
            {"question": "Q one", "answer": "Work... #### 1,234"},
            {"question": "Q two", "answer": "More work #### 7"},
        ]

    fake_datasets(monkeypatch, load_dataset)
    problems = load_problems("gsm8k", limit=2)
    assert calls == [("openai/gsm8k", "main", "test")]
    assert problems == [
        Problem(id="gsm8k-0", problem="Q one", answer="1234"),
        Problem(id="gsm8k-1", problem="Q two", answer="7"),
    ]


def test_hub_integer_answers_are_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"id": 0, "question": "Q", "answer": 27.0}, {"id": 1, "question": "R", "answer": "025"}]
    fake_datasets(monkeypatch, lambda *args, **kwargs: rows)
    assert [(p.id, p.answer) for p in load_problems("amc23")] == [("0", "27"), ("1", "25")]


def test_hub_missing_column(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_datasets(monkeypatch, lambda *args, **kwargs: [{"text": "Q", "answer": "1"}])
    with pytest.raises(DatasetError, match=r"HuggingFaceH4/MATH-500 has no column 'problem'"):
        load_problems("math500")


# -- specs, limit, names ----------------------------------------------------------------------


def test_jsonl_path_spec(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "own.jsonl", [GOOD])
    assert load_problems(str(path)) == [Problem(id="p1", problem="What is 1 + 1?", answer="2")]


def test_missing_jsonl_path_spec(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_problems(str(tmp_path / "nope.jsonl"))


def test_unknown_spec_lists_valid_names() -> None:
    with pytest.raises(DatasetError) as caught:
        load_problems("aime2099")
    message = str(caught.value)
    assert "'aime2099'" in message
    for name in ["aime24", "aime25", "math500", "gsm8k", "amc23", "planted", ".jsonl"]:
        assert name in message


def test_limit_takes_the_first_problems(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "many.jsonl", [{**GOOD, "id": f"p{i}"} for i in range(5)])
    assert [p.id for p in load_problems(str(path), limit=2)] == ["p0", "p1"]
    assert len(load_problems(str(path), limit=50)) == 5
    assert len(load_problems(str(path))) == 5


@pytest.mark.parametrize("limit", [0, -3])
def test_non_positive_limit(limit: int) -> None:
    with pytest.raises(DatasetError, match=f"limit must be a positive .*got {limit}"):
        load_problems("planted", limit=limit)


def test_planted_spec() -> None:
    assert load_problems("planted", limit=4, seed=2) == generate_planted(4, seed=2)
    assert len(load_problems("planted")) == 30


def test_dataset_name() -> None:
    assert dataset_name("aime24") == "aime24"
    assert dataset_name("gsm8k") == "gsm8k"
    assert dataset_name("planted") == "planted"
    assert dataset_name("some/dir/my_traces.jsonl") == "my_traces"


def test_missing_data_dir_is_an_error_not_a_hub_fallback(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such folder"):
        load_problems("aime24", data_dir=tmp_path / "typo")


def test_non_utf8_names_the_line_not_a_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    second = {**GOOD, "id": "p2"}
    path.write_bytes(
        (json.dumps(GOOD) + "\n" + json.dumps(second) + "\n").encode()
        + b'{"id": "p3", "problem": "caf\xe9", "answer": "1"}\n'
    )
    with pytest.raises(DatasetError) as caught:
        load_jsonl(path)
    message = str(caught.value)
    assert message.startswith(f"{path}, line 3: not UTF-8 text (byte 29 of the line is b'\\xe9')")
    assert "\n" not in message and "position" not in message


def test_line_separators_inside_strings_and_a_bom_are_text(tmp_path: Path) -> None:
    # U+2028 is valid inside a JSON string; str.splitlines() would break the line there.
    path = tmp_path / "seps.jsonl"
    first = {**GOOD, "problem": "one\u2028two\x85three"}
    text = json.dumps(first, ensure_ascii=False) + "\r\n" + json.dumps({**GOOD, "id": "p2"})
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    problems = load_jsonl(path)
    assert [p.id for p in problems] == ["p1", "p2"]
    assert problems[0].problem == "one\u2028two\x85three"


def test_a_folder_or_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "set.jsonl"
    folder.mkdir()
    with pytest.raises(DatasetError, match=r"set\.jsonl: is a folder, not a \.jsonl file"):
        load_problems(str(folder))
    with pytest.raises(DatasetError, match=r"^/proc/self/mem: cannot read \(Input/output error\)$"):
        load_jsonl(Path("/proc/self/mem"))
