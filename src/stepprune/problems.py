"""Loading problems: built-in benchmarks, the planted set, or a user's own JSONL file.

A JSONL file has one object per line with ``id``, ``problem`` and ``answer``, and optionally
``reasoning`` (the user's own trace, which is then teacher-forced instead of generated),
``final`` (the answer section after the reasoning) and ``step_labels`` (one label per paragraph
of ``reasoning``), or ``prompt_ids`` and ``output_ids`` (a whole trace as token ids, made
elsewhere: scored and pruned as is). Every problem in the input is reported as one line naming
the file, line and field, so that a user can fix the file without reading a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepprune.planted import (
    DEFAULT_SIZE,
    DEFAULT_VARIANT,
    PARAGRAPH_SEPARATOR,
    PLANTED_VARIANTS,
    generate_variant,
)
from stepprune.schema import Problem

DATA_DIR_ENV = "STEPPRUNE_DATA_DIR"
PLANTED_SPEC = "planted"
REQUIRED_FIELDS = ("id", "problem", "answer")


class DatasetError(ValueError):
    """A dataset that cannot be loaded; the message is one line naming file, line and field."""


@dataclass(frozen=True)
class BuiltinDataset:
    """Where a built-in benchmark lives: a local JSONL file name and a Hugging Face fallback.

    ``fields`` maps our field names (``id``, ``problem``, ``answer``) to the hub dataset's
    columns; an ``id`` column that is absent gives ids ``<name>-<row>``. ``answer_after``: the
    answer is the text after this marker (GSM8K's ``#### 18``). ``integer_answers``: answers are
    integers, normalised as in the local copies ("025" -> "25", "27.0" -> "27").
    """

    filename: str
    hub_id: str
    split: str
    fields: dict[str, str]
    config: str | None = None
    answer_after: str | None = None
    integer_answers: bool = False


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "aime24": BuiltinDataset(
        "aime24.jsonl",
        "HuggingFaceH4/aime_2024",
        "train",
        {"id": "id", "problem": "problem", "answer": "answer"},
        integer_answers=True,
    ),
    "aime25": BuiltinDataset(
        "aime25.jsonl",
        "yentinglin/aime_2025",
        "train",
        {"id": "id", "problem": "problem", "answer": "answer"},
        integer_answers=True,
    ),
    "math500": BuiltinDataset(
        "math500.jsonl",
        "HuggingFaceH4/MATH-500",
        "test",
        {"id": "unique_id", "problem": "problem", "answer": "answer"},
    ),
    "gsm8k": BuiltinDataset(
        "gsm8k_test.jsonl",
        "openai/gsm8k",
        "test",
        {"problem": "question", "answer": "answer"},
        config="main",
        answer_after="####",
        integer_answers=True,
    ),
    "amc23": BuiltinDataset(
        "amc23.jsonl",
        "math-ai/amc23",
        "test",
        {"id": "id", "problem": "question", "answer": "answer"},
        integer_answers=True,
    ),
}


def _valid_specs() -> str:
    planted = [PLANTED_SPEC] + [f"{PLANTED_SPEC}:{v}" for v in PLANTED_VARIANTS]
    return ", ".join([*BUILTIN_DATASETS, *planted]) + ", or a path to a .jsonl file"


def planted_variant(spec: str) -> str | None:
    """The planted-set variant a dataset spec names: ``planted`` is the default (semantic),
    ``planted:causal`` / ``planted:semantic`` name one; None for any other spec."""
    if spec == PLANTED_SPEC:
        return DEFAULT_VARIANT
    prefix = PLANTED_SPEC + ":"
    if not spec.startswith(prefix):
        return None
    variant = spec[len(prefix) :]
    if variant not in PLANTED_VARIANTS:
        raise DatasetError(
            f"unknown planted variant {variant!r} in {spec!r}: expected "
            + " or ".join(f"{prefix}{v}" for v in PLANTED_VARIANTS)
        )
    return variant


def _show(value: Any, limit: int = 60) -> str:
    """A value for an error message: its repr, shortened so the message stays one line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_text(value: Any, where: str, name: str) -> str:
    """A required field as a non-empty string; numbers (ids, answers) are accepted."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DatasetError(f"{where}: missing or empty field '{name}'")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DatasetError(
            f"{where}: field '{name}' must be a string or a number, got {_show(value)}"
        )
    if isinstance(value, float):
        # 27.0 is the answer 27: JSON writers and pandas turn integer columns into floats.
        return str(int(value)) if value.is_integer() else str(value)
    # Ids and answers are compared as strings, so stray spaces would break matching.
    return str(value) if name == "problem" else str(value).strip()


def _paragraphs(reasoning: str) -> list[str]:
    """The paragraphs of a trace, split at blank lines as segmentation splits them (which also
    merges very short ones, so labels of such paragraphs may still go unused)."""
    return [part for part in reasoning.split(PARAGRAPH_SEPARATOR) if part.strip()]


def _parse_record(record: dict[str, Any], where: str) -> Problem:
    """One JSONL object as a Problem; ``where`` is "file, line N" for messages."""
    values = {name: _as_text(record.get(name), where, name) for name in REQUIRED_FIELDS}
    reasoning, final, labels = record.get("reasoning"), record.get("final"), None
    if reasoning is not None and (not isinstance(reasoning, str) or not reasoning.strip()):
        raise DatasetError(
            f"{where}: field 'reasoning' must be a non-empty string or null, got {_show(reasoning)}"
        )
    if final is not None:
        if not isinstance(final, str):
            raise DatasetError(f"{where}: field 'final' must be a string, got {_show(final)}")
        if reasoning is None:
            raise DatasetError(f"{where}: field 'final' is given without 'reasoning'")
    if record.get("step_labels") is not None:
        labels = record["step_labels"]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise DatasetError(
                f"{where}: field 'step_labels' must be a list of strings, got {_show(labels)}"
            )
        if reasoning is None:
            raise DatasetError(f"{where}: field 'step_labels' is given without 'reasoning'")
        # Labels are matched to steps by position, so a count mismatch would mislabel them.
        count = len(_paragraphs(reasoning))
        if len(labels) != count:
            raise DatasetError(
                f"{where}: field 'step_labels' has {len(labels)} labels but 'reasoning' has "
                f"{count} paragraphs (separated by blank lines)"
            )
    prompt_ids, output_ids = _parse_ids(record, where)
    if output_ids is not None and reasoning is not None:
        raise DatasetError(f"{where}: give either 'reasoning' or 'prompt_ids'/'output_ids'")
    return Problem(
        **values,
        reasoning=reasoning,
        final=final,
        step_labels=labels,
        prompt_ids=prompt_ids,
        output_ids=output_ids,
    )


def _parse_ids(record: dict[str, Any], where: str) -> tuple[list[int] | None, list[int] | None]:
    """``prompt_ids`` and ``output_ids`` of a trace made elsewhere: both or neither, each a
    non-empty list of non-negative integers (checked against the model's vocabulary later)."""
    given = [name for name in ("prompt_ids", "output_ids") if record.get(name) is not None]
    if not given:
        return None, None
    if len(given) == 1:
        other = "output_ids" if given[0] == "prompt_ids" else "prompt_ids"
        raise DatasetError(f"{where}: field '{given[0]}' is given without '{other}'")
    ids = []
    for name in ("prompt_ids", "output_ids"):
        value = record[name]
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value)
        ):
            raise DatasetError(
                f"{where}: field '{name}' must be a non-empty list of token ids (integers >= 0), "
                f"got {_show(value)}"
            )
        ids.append(value)
    return ids[0], ids[1]


def load_jsonl(path: Path) -> list[Problem]:
    """Problems from a JSONL file, one object per line; blank lines are skipped.

    Raises:
        DatasetError: the file is missing, unreadable or empty, a line is not a JSON object, a
            required field is missing or empty, an optional field has the wrong type, or an id
            occurs twice.
    """
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path}: is a folder, not a .jsonl file")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DatasetError(f"{path}: cannot read ({error.strerror or error})") from None
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    # Split at "\n" only: JSON strings may hold U+2028 and other characters that
    # str.splitlines() would split at. Each line is decoded alone, so an error names its line.
    for number, raw_line in enumerate(raw.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DatasetError(
                f"{path}, line {number}: not UTF-8 text (byte {error.start + 1} of the line is "
                f"{raw_line[error.start : error.start + 1]!r}); save the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{where}: invalid JSON: {error}") from None
        if not isinstance(record, dict):
            raise DatasetError(
                f"{where}: expected a JSON object, got {type(record).__name__} {_show(record)}"
            )
        problem = _parse_record(record, where)
        if problem.id in first_line:
            raise DatasetError(
                f"{where}: duplicate id {problem.id!r} (first on line {first_line[problem.id]})"
            )
        first_line[problem.id] = number
        problems.append(problem)
    if not problems:
        raise DatasetError(f"{path}: no problems in the file")
    return problems


def _hub_answer(value: Any, info: BuiltinDataset) -> str:
    """A hub answer in the form of the local copies (see ``BuiltinDataset``)."""
    text = str(value).strip()
    if info.answer_after is not None and info.answer_after in text:
        text = text.split(info.answer_after)[-1].strip().replace(",", "")
    if info.integer_answers and re.fullmatch(r"-?\d+(\.0*)?", text):
        text = str(int(float(text)))
    return text


def _load_from_hub(name: str, info: BuiltinDataset, local: str) -> list[Problem]:
    """A built-in benchmark from the Hugging Face hub (or the ``datasets`` cache)."""

    def failure(reason: str) -> DatasetError:
        return DatasetError(
            f"dataset {name!r}: no local copy {local} and the Hugging Face hub failed: {reason}; "
            "pass --data-dir or a .jsonl path"
        )

    try:
        from datasets import load_dataset  # heavy, optional (extra 'hub'): import on use
    except ImportError:
        raise failure(
            "the 'datasets' package is not installed (pip install 'stepprune[hub]')"
        ) from None
    try:
        rows = load_dataset(info.hub_id, info.config, split=info.split)
    except Exception as error:  # network, auth, offline mode, renamed repos: all say the same
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise failure(f"{type(error).__name__}: {first_line}") from None
    problems = []
    for row_number, row in enumerate(rows):
        missing = [f for f in ("problem", "answer") if info.fields[f] not in row]
        if missing:
            raise failure(
                f"{info.hub_id} has no column {info.fields[missing[0]]!r} (columns: "
                f"{', '.join(row)})"
            )
        id_column = info.fields.get("id")
        row_id = row.get(id_column) if id_column else None
        problems.append(
            Problem(
                id=str(row_id) if row_id is not None else f"{name}-{row_number}",
                problem=row[info.fields["problem"]],
                answer=_hub_answer(row[info.fields["answer"]], info),
            )
        )
    return problems


def _load_builtin(name: str, data_dir: Path | None) -> list[Problem]:
    """A built-in benchmark: the local copy in ``data_dir`` (or $STEPPRUNE_DATA_DIR), else the
    hub."""
    info = BUILTIN_DATASETS[name]
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir = Path(os.environ[DATA_DIR_ENV])
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            # A mistyped folder must not silently fall back to the hub.
            raise DatasetError(f"data dir {data_dir}: no such folder")
        local = Path(data_dir) / info.filename
        if local.is_file():
            return load_jsonl(local)
        return _load_from_hub(name, info, f"in {data_dir}")
    return _load_from_hub(name, info, f"(no --data-dir or ${DATA_DIR_ENV} given)")


def load_problems(
    spec: str, data_dir: Path | None = None, limit: int | None = None, seed: int = 0
) -> list[Problem]:
    """Problems named by ``spec``: ``planted[:variant]``, a built-in name, or a .jsonl path.

    Args:
        spec: ``planted`` (the generated set, ``limit`` or 30 problems from ``seed``;
            ``planted:causal`` or ``planted:semantic`` pick a variant, plain is semantic), one of
            ``BUILTIN_DATASETS`` (read from ``data_dir``, else ``$STEPPRUNE_DATA_DIR``, else the
            Hugging Face hub), or a JSONL path.
        data_dir: Folder with local copies of the built-in datasets.
        limit: Keep only the first ``limit`` problems.
        seed: Seed of the planted set.

    Raises:
        DatasetError: unknown spec, bad limit, or a dataset that cannot be loaded.
    """
    if limit is not None and limit <= 0:
        raise DatasetError(f"limit must be a positive number of problems, got {limit}")
    variant = planted_variant(spec)
    if variant is not None:
        return generate_variant(variant, limit or DEFAULT_SIZE, seed)
    if spec in BUILTIN_DATASETS:
        problems = _load_builtin(spec, data_dir)
    elif spec.endswith(".jsonl") or Path(spec).is_file():
        problems = load_jsonl(Path(spec))
    else:
        raise DatasetError(f"unknown dataset {spec!r}: expected {_valid_specs()}")
    return problems[:limit] if limit is not None else problems


def dataset_name(spec: str) -> str:
    """A short name for reports and run folders: the built-in name, ``planted`` (either
    spelling of the default variant, which are the same set) or ``planted-<variant>``, or a
    file's stem."""
    if spec in BUILTIN_DATASETS:
        return spec
    with contextlib.suppress(DatasetError):  # an unknown variant is named as it is given
        variant = planted_variant(spec)
        if variant is not None:
            return PLANTED_SPEC if variant == DEFAULT_VARIANT else f"{PLANTED_SPEC}-{variant}"
    return Path(spec).stem or spec
