"""Reading a finished (or interrupted) run folder for reports, without modifying it.

    run folder -> load_run() -> Run(config, traces, records, summary)

``RunStore`` is the writer: opening a folder with it rewrites ``config.json`` and cuts a partial
last line. Reports and viewers must never change results, so this module reads the same files
read-only: a partial last line (a run still going, or killed mid-write) is skipped, not cut.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepprune.schema import Record, Trace
from stepprune.store import (
    CONFIG_FILE,
    CONTROLS_FILE,
    RECORDS_FILE,
    TRACES_FILE,
    RunFolderError,
    read_jsonl,
    threshold_key,
)

SUMMARY_FILE = "summary.json"
CONTROL_PREFIX = "random"
# What `stepprune run` writes first, in order; the first one missing is named in the error.
REQUIRED_FILES = (CONFIG_FILE, TRACES_FILE, RECORDS_FILE)


@dataclass
class Run:
    """The contents of one run folder.

    ``config`` is ``config.json`` as written by ``stepprune run`` (keys ``config``,
    ``environment``, ``identity``). ``summary`` is None for a run that has not finished: reports
    are computed from ``records``, so an interrupted run can still be inspected.
    """

    path: Path
    config: dict[str, Any]
    traces: list[Trace]
    records: list[Record]
    summary: dict[str, Any] | None = None
    settings: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        # Settings of the run (model, dataset, scorer, ...): ``config["config"]`` for folders
        # written by `stepprune run`, the top level for hand-written ones.
        inner = self.config.get("config")
        self.settings = inner if isinstance(inner, dict) else self.config

    @property
    def model(self) -> str:
        return str(self.settings.get("model", "?"))

    @property
    def dataset(self) -> str:
        return str(self.settings.get("dataset", "?"))

    @property
    def scorer(self) -> str:
        """The run's scorer spec from the config, else the first record's or trace's."""
        if self.settings.get("scorer"):
            return str(self.settings["scorer"])
        for item in [*self.records, *self.traces]:
            if item.scorer:
                return item.scorer
        return "?"

    @property
    def mode(self) -> str:
        if self.settings.get("mode"):
            return str(self.settings["mode"])
        return self.records[0].mode if self.records else "?"

    def trace(self, problem_id: str, sample: int = 0) -> Trace | None:
        """The trace of ``problem_id`` / ``sample``; None when the run has none."""
        for trace in self.traces:
            if trace.problem_id == problem_id and trace.sample == sample:
                return trace
        return None

    @property
    def problem_ids(self) -> list[str]:
        """Problem ids in run order (first appearance in traces, then in records)."""
        seen = dict.fromkeys(t.problem_id for t in self.traces)
        seen.update(dict.fromkeys(r.problem_id for r in self.records))
        return list(seen)


def is_control(scorer: str) -> bool:
    """Whether a scorer spec is the random-pruning control (``random``, ``random:seed=3``)."""
    return scorer.startswith(CONTROL_PREFIX)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path}: invalid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _parse_rows(path: Path, rows: list[dict[str, Any]], cls: type[Any]) -> list[Any]:
    """Rows as dataclasses; a row missing a field is reported with its line's problem id."""
    items = []
    for number, row in enumerate(rows, start=1):
        try:
            items.append(cls.from_json(row))
        except TypeError as error:
            raise RunFolderError(
                f"{path}: row {number} ({row.get('problem_id', '?')}): not a {cls.__name__} "
                f"({error})"
            ) from None
    return items


def record_key(record: Record) -> tuple[str, int, str, str, str, str]:
    """Identity of a record: one answer per problem x sample x threshold x scorer/mode/policy."""
    return (
        record.problem_id,
        record.sample,
        threshold_key(record.threshold),
        record.scorer,
        record.mode,
        record.policy,
    )


def load_run(path: Path | str) -> Run:
    """Read a run folder written by ``stepprune run`` (finished or not).

    Duplicate lines (the same trace or record appended twice) keep the last one, as the writer
    does when it reopens a folder, so a report never counts a unit twice.

    Raises:
        RunFolderError: ``path`` is missing, not a folder, lacks one of ``config.json``,
            ``traces.jsonl``, ``records.jsonl`` (the message names it), or holds a corrupted file.
    """
    folder = Path(path)
    if not folder.exists():
        raise RunFolderError(f"{folder}: no such run folder")
    if not folder.is_dir():
        raise RunFolderError(f"{folder} is not a run folder (it is a file)")
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise RunFolderError(
                f"{folder} is not a run folder: {name} is missing "
                f"(a run folder holds {', '.join(REQUIRED_FILES)}, written by `stepprune run`)"
            )
    config = _read_json(folder / CONFIG_FILE)
    trace_path, record_path = folder / TRACES_FILE, folder / RECORDS_FILE
    traces: dict[tuple[str, int], Trace] = {}
    for trace in _parse_rows(trace_path, read_jsonl(trace_path), Trace):
        traces[(trace.problem_id, trace.sample)] = trace
    records: dict[tuple[str, int, str, str, str, str], Record] = {}
    for path in (record_path, folder / CONTROLS_FILE):  # controls.jsonl is optional
        for record in _parse_rows(path, read_jsonl(path), Record):
            records[record_key(record)] = record
    summary_path = folder / SUMMARY_FILE
    summary = _read_json(summary_path) if summary_path.is_file() else None
    return Run(folder, config, list(traces.values()), list(records.values()), summary)
