"""The run folder: config, traces and records appended as each unit finishes, so runs resume.

Layout of ``--out``::

    config.json      everything needed to reproduce the run
    traces.jsonl     one line per problem x sample (prompt/output ids, steps, importances)
    scores.jsonl     importances of the traces under other scorers (traces are reused)
    records.jsonl    one line per problem x sample x threshold x scorer
    controls.jsonl   the same for the random-pruning control (kept apart, so records.jsonl
                     holds exactly problems x samples x thresholds for each scorer)
    summary.json, results.md, importance.png   written at the end of every run

Lines are appended and flushed one by one. A run killed mid-write leaves at most one partial last
line, which is dropped when the folder is opened again; re-running the same command skips every
finished unit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stepprune.schema import Record, Trace

CONFIG_FILE = "config.json"
TRACES_FILE = "traces.jsonl"
RECORDS_FILE = "records.jsonl"
SCORES_FILE = "scores.jsonl"
CONTROLS_FILE = "controls.jsonl"
# Scorer specs of the random-pruning control that `stepprune run` adds beside every scorer.
CONTROL_SCORER = "random-control"


def records_file(scorer: str) -> str:
    """The file that holds records of ``scorer``: the random control's go to their own file."""
    return CONTROLS_FILE if scorer.startswith(CONTROL_SCORER) else RECORDS_FILE


class RunFolderError(RuntimeError):
    """The run folder cannot be used (different experiment, corrupted file)."""


def threshold_key(threshold: float) -> str:
    """Canonical text of a threshold ("0.0", "0.1"), used in keys and reports."""
    return repr(float(threshold))


def record_key(record: Record) -> tuple[str, int, str, str]:
    """A record is one problem x sample x threshold x scorer (the control has its own)."""
    return (record.problem_id, record.sample, threshold_key(record.threshold), record.scorer)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` without ever leaving a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_jsonl(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Rows of a JSONL file. A partial last line (no trailing newline: a write cut by a kill) is
    skipped, and with ``repair`` also truncated away so that later appends stay aligned.

    Raises:
        RunFolderError: a complete line that is not a JSON object (a corrupted file).
    """
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number != len(lines) or raw.endswith(b"\n"):
                raise RunFolderError(f"{path}: line {number}: invalid JSON ({error.msg})") from None
            if repair:
                with path.open("r+b") as handle:
                    handle.truncate(len(raw) - len(line))
            continue
        if not isinstance(row, dict):
            raise RunFolderError(f"{path}: line {number}: expected a JSON object")
        rows.append(row)
    return rows


class RunStore:
    """Append-only access to one run folder.

    ``identity`` holds the settings that define the experiment (model, dataset, sampling,
    scorer...). Opening an existing folder with a different identity is refused, so results of
    different experiments never mix; settings outside it (thresholds, samples, limit) may change.
    """

    def __init__(self, out: Path, identity: dict[str, Any], config: dict[str, Any]) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        config_path = out / CONFIG_FILE
        if config_path.exists():
            try:
                previous = json.loads(config_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise RunFolderError(f"{config_path}: invalid JSON ({error.msg})") from None
            old_identity = previous.get("identity", {})
            for key, value in identity.items():
                if key in old_identity and old_identity[key] != value:
                    raise RunFolderError(
                        f"{out} holds a run with {key}={old_identity[key]!r}, not {value!r}; "
                        "use another --out"
                    )
        write_atomic(config_path, json.dumps({**config, "identity": identity}, indent=2) + "\n")
        self.traces: dict[tuple[str, int], Trace] = {}
        for row in read_jsonl(out / TRACES_FILE, repair=True):
            trace = Trace.from_json(row)
            self.traces[(trace.problem_id, trace.sample)] = trace
        self.scores: dict[tuple[str, int, str], list[float]] = {}
        for row in read_jsonl(out / SCORES_FILE, repair=True):
            self.scores[(row["problem_id"], row["sample"], row["scorer"])] = row["importances"]
        self.records: dict[tuple[str, int, str, str], Record] = {}
        for name in (RECORDS_FILE, CONTROLS_FILE):
            for row in read_jsonl(out / name, repair=True):
                record = Record.from_json(row)
                self.records[record_key(record)] = record

    def _append(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        with (self.out / name).open("a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def add_trace(self, trace: Trace) -> None:
        self._append(TRACES_FILE, [trace.to_json()])
        self.traces[(trace.problem_id, trace.sample)] = trace

    def add_records(self, records: list[Record]) -> None:
        for name in (RECORDS_FILE, CONTROLS_FILE):
            rows = [r.to_json() for r in records if records_file(r.scorer) == name]
            if rows:
                self._append(name, rows)
        for r in records:
            self.records[record_key(r)] = r

    def has_record(self, problem_id: str, sample: int, threshold: float, scorer: str) -> bool:
        return (problem_id, sample, threshold_key(threshold), scorer) in self.records

    def importances(self, trace: Trace, scorer: str) -> list[float] | None:
        """Importances of a trace's steps under ``scorer``, if computed."""
        if trace.scorer == scorer:
            return [s.importance or 0.0 for s in trace.steps]
        return self.scores.get((trace.problem_id, trace.sample, scorer))

    def add_scores(self, trace: Trace, scorer: str, importances: list[float]) -> None:
        row = {"problem_id": trace.problem_id, "sample": trace.sample, "scorer": scorer}
        self._append(SCORES_FILE, [{**row, "importances": importances}])
        self.scores[(trace.problem_id, trace.sample, scorer)] = importances
