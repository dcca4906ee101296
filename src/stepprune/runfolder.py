"""The run folder: its file names, keys, the one writer and the one reader.

Layout of ``--out``::

    config.json      every setting, library versions, and the identity that must match to resume
    traces.jsonl     one line per problem x sample (prompt/output ids, steps, importances)
    scores.jsonl     importances of the traces under other scorers (traces are reused)
    records.jsonl    one line per problem x sample x threshold x scorer
    controls.jsonl   the same for the random-pruning control (kept apart, so records.jsonl
                     holds exactly problems x samples x thresholds for each scorer)
    summary.json, results.md, importance.png   written at the end of every run
    .lock            held (flock) while a run writes the folder

Lines are appended, flushed and fsynced one unit at a time. A run killed mid-write leaves at
most one partial last line: the writer cuts it when it opens the folder, the reader skips it.

``RunFolder`` is the writer (``stepprune run``); ``load_run`` the read-only reader (reports,
``show``). Both use the same keys: ``threshold_key`` and ``record_key``; ``is_control`` is the
one rule for what is a random-control record, ``control_owner`` the one rule for which scorer
a control record controls.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stepprune.schema import Record, Trace

CONFIG_FILE = "config.json"
TRACES_FILE = "traces.jsonl"
RECORDS_FILE = "records.jsonl"
SCORES_FILE = "scores.jsonl"
CONTROLS_FILE = "controls.jsonl"
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.md"
IMPORTANCE_PLOT = "importance.png"
LOCK_FILE = ".lock"
# Everything a run folder may hold (a report folder included).
RUN_FILES = frozenset(
    {
        CONFIG_FILE,
        TRACES_FILE,
        RECORDS_FILE,
        SCORES_FILE,
        CONTROLS_FILE,
        SUMMARY_FILE,
        RESULTS_FILE,
        IMPORTANCE_PLOT,
        LOCK_FILE,
        "report",
        "config.json.tmp",
        "summary.json.tmp",
        "results.md.tmp",
    }
)
# What `stepprune run` writes first, in order; the first one missing is named in the error.
REQUIRED_FILES = (CONFIG_FILE, TRACES_FILE, RECORDS_FILE)

# The random-pruning control that `stepprune run` adds beside every scorer. Its spec is
# ``random-control:seed=S,of=SCORER``: the control of one scorer (it keeps as many steps as that
# scorer at each threshold), so a folder reused with another --scorer gets another control.
# Folders written before 0.3 hold ``random-control:seed=S`` (see ``control_owner``). A user's
# own ``random`` scorer is *not* a control.
CONTROL_SCORER = "random-control"
_OF = ",of="

RecordKey = tuple[str, int, str, str]


class RunFolderError(RuntimeError):
    """The run folder cannot be used (another experiment, a corrupted file, held by a run)."""


def is_control(scorer: str) -> bool:
    """Whether ``scorer`` is the random-pruning control's spec (``random-control:seed=S``)."""
    return scorer == CONTROL_SCORER or scorer.startswith(CONTROL_SCORER + ":")


def control_spec(seed: int, scorer: str) -> str:
    """The spec of the random control of ``scorer``: ``random-control:seed=S,of=SCORER``."""
    return f"{CONTROL_SCORER}:seed={seed}{_OF}{scorer}"


def controlled_scorer(spec: str) -> str | None:
    """The scorer a control spec names (``of=``); None for other specs and for controls
    written before controls named their scorer."""
    if not is_control(spec) or _OF not in spec:
        return None
    return spec.split(_OF, 1)[1]


def name_control(spec: str, owner: str) -> str:
    """A control spec that names its scorer: ``spec`` itself, or (written before 0.3)
    ``spec`` with ``of=owner`` added."""
    return spec if controlled_scorer(spec) is not None else f"{spec}{_OF}{owner}"


def legacy_owner(records: Iterable[Record]) -> str | None:
    """The scorer that a control without ``of=`` (written before 0.3) belongs to: the folder's
    first scorer, i.e. that of its first non-control record. Those versions wrote one control
    per unit, with the first run's scorer, and reused it for every later --scorer."""
    return next((r.scorer for r in records if not is_control(r.scorer)), None)


def control_owner(spec: str, legacy: str | None) -> str | None:
    """The scorer that the control ``spec`` controls (``legacy``: see ``legacy_owner``)."""
    return controlled_scorer(spec) or (legacy if is_control(spec) else None)


def threshold_key(threshold: float) -> str:
    """Canonical text of a threshold ("0.0", "0.1", "0.25"), used in every key and report.

    Rounded to 6 decimals first, so thresholds built by arithmetic (``0.1 * 3``) get the key of
    the literal ("0.3"), never ``"0.30000000000000004"``.
    """
    return repr(round(float(threshold), 6))


def record_key(record: Record) -> RecordKey:
    """A record is one problem x sample x threshold x scorer (mode and policy are part of the
    folder's identity, so one folder never holds two of them)."""
    return (record.problem_id, record.sample, threshold_key(record.threshold), record.scorer)


def records_file(scorer: str) -> str:
    """The file that holds records of ``scorer``: the control's go to their own file."""
    return CONTROLS_FILE if is_control(scorer) else RECORDS_FILE


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` without ever leaving a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_jsonl(path: Path, repair: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of a JSONL file.

    A last line without its newline is a write cut by a kill: skipped if it is not valid JSON.
    With ``repair`` such a line is cut away, and a valid one gets its newline, so that later
    appends stay one row per line.

    Raises:
        RunFolderError: a complete line that is not a JSON object, or bytes that are not UTF-8
            (the message names file and line).
    """
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    complete = raw.endswith(b"\n") or not raw
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last = number == len(lines) and not complete
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise RunFolderError(f"{path}: line {number}: not UTF-8 text") from None
        except json.JSONDecodeError as error:
            if not last:
                raise RunFolderError(f"{path}: line {number}: invalid JSON ({error.msg})") from None
            if repair:
                with path.open("r+b") as handle:
                    handle.truncate(len(raw) - len(line))
            continue
        if not isinstance(row, dict):
            raise RunFolderError(f"{path}: line {number}: expected a JSON object")
        if last and repair:
            with path.open("ab") as handle:
                handle.write(b"\n")
        rows.append((number, row))
    return rows


def _parse(path: Path, repair: bool, cls: type[Any]) -> list[Any]:
    """Rows of ``path`` as ``cls`` (Trace or Record); a row that is not one names its line."""
    items = []
    for number, row in read_jsonl(path, repair):
        try:
            items.append(cls.from_json(row))
        except (TypeError, KeyError, ValueError, AttributeError) as error:
            raise RunFolderError(
                f"{path}: line {number}: not a {cls.__name__.lower()} ({error})"
            ) from None
    return items


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RunFolderError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path}: invalid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_scores(path: Path, repair: bool) -> dict[tuple[str, int, str], list[float]]:
    scores = {}
    for number, row in read_jsonl(path, repair):
        try:
            key = (str(row["problem_id"]), int(row["sample"]), str(row["scorer"]))
            scores[key] = [float(x) for x in row["importances"]]
        except (KeyError, TypeError, ValueError) as error:
            raise RunFolderError(f"{path}: line {number}: not a scores row ({error})") from None
    return scores


def adopt_legacy_controls(records: list[Record]) -> list[Record]:
    """``records`` with each control written before 0.3 (``random-control:seed=S``) named as the
    control of the folder's first scorer (``legacy_owner``), so that a run of that scorer finds
    it done and a run of another scorer makes its own. The files are not rewritten."""
    owner = legacy_owner(records)
    if owner is None:
        return records
    return [
        replace(r, scorer=name_control(r.scorer, owner)) if is_control(r.scorer) else r
        for r in records
    ]


# -- reader --------------------------------------------------------------------------------------


@dataclass
class Run:
    """The contents of one run folder, read-only.

    ``config`` is ``config.json`` (keys ``config``, ``environment``, ``identity``); ``settings``
    its ``config`` part (the top level for hand-written folders). ``summary`` is None for a run
    that has not finished: reports are computed from ``records``.
    """

    path: Path
    config: dict[str, Any]
    traces: list[Trace]
    records: list[Record]
    summary: dict[str, Any] | None = None
    scores: dict[tuple[str, int, str], list[float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
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
        """The run's scorer spec: the first non-control record's, else the config's."""
        for record in self.records:
            if not is_control(record.scorer):
                return record.scorer
        if self.settings.get("scorer"):
            return str(self.settings["scorer"])
        return next((t.scorer for t in self.traces if t.scorer), "?")

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


def load_run(path: Path | str) -> Run:
    """Read a run folder written by ``stepprune run`` (finished or not), changing nothing.

    Duplicate lines (the same trace or record appended twice) keep the last one, as the writer
    does, so a report never counts a unit twice.

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
    traces = {(t.problem_id, t.sample): t for t in _parse(folder / TRACES_FILE, False, Trace)}
    records: dict[RecordKey, Record] = {}
    for name in (RECORDS_FILE, CONTROLS_FILE):  # controls.jsonl is optional
        for record in _parse(folder / name, False, Record):
            records[record_key(record)] = record
    summary_path = folder / SUMMARY_FILE
    summary = _read_json(summary_path) if summary_path.is_file() else None
    scores = _read_scores(folder / SCORES_FILE, False)
    return Run(folder, config, list(traces.values()), list(records.values()), summary, scores)


# -- writer --------------------------------------------------------------------------------------


class RunFolder:
    """Append-only writer of one run folder, held by one process at a time.

    ``identity`` holds the settings that define the experiment (model, dataset content,
    sampling, mode, ...). Opening a folder with a different identity is refused before anything
    is written, so results of different experiments never mix; settings outside it
    (thresholds, samples, limit, scorer) may change. While open, the folder is locked with
    ``flock`` on ``.lock``: a second run is refused, and the kernel drops the lock of a killed one.
    """

    def __init__(self, out: Path, identity: dict[str, Any], config: dict[str, Any]) -> None:
        self.out = Path(out)
        self._identity, self._config = identity, config
        if self.out.exists() and not self.out.is_dir():
            raise RunFolderError(f"--out {self.out}: exists and is not a folder")
        if self.out.is_dir() and not (self.out / CONFIG_FILE).exists():
            # A folder of something else (say `--out src`): never write a run into it.
            other = sorted(p.name for p in self.out.iterdir() if p.name not in RUN_FILES)
            if other:
                raise RunFolderError(
                    f"--out {self.out}: not a run folder (it holds {', '.join(other[:3])}"
                    f"{', ...' if len(other) > 3 else ''}); use a new or empty folder"
                )
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._lock = (self.out / LOCK_FILE).open("a")
        except OSError as error:
            raise RunFolderError(
                f"--out {self.out}: cannot write there ({error.strerror})"
            ) from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RunFolderError(
                f"--out {self.out}: another stepprune run is writing this folder; wait for it "
                "or use another --out"
            ) from None
        try:
            self._open(identity)
        except BaseException:
            self.close()
            raise

    def _open(self, identity: dict[str, Any]) -> None:
        config_path = self.out / CONFIG_FILE
        if config_path.exists():
            old_identity = _read_json(config_path).get("identity", {})
            for key, value in identity.items():
                if key in old_identity and old_identity[key] != value:
                    raise RunFolderError(
                        f"{self.out} holds a run with {key}={old_identity[key]!r}, not "
                        f"{value!r}; use another --out"
                    )
        self.traces: dict[tuple[str, int], Trace] = {
            (t.problem_id, t.sample): t for t in _parse(self.out / TRACES_FILE, True, Trace)
        }
        self.scores = _read_scores(self.out / SCORES_FILE, True)
        self.records: dict[RecordKey, Record] = {}
        for record in adopt_legacy_controls(
            [
                r
                for name in (RECORDS_FILE, CONTROLS_FILE)
                for r in _parse(self.out / name, True, Record)
            ]
        ):
            self.records[record_key(record)] = record

    def write_config(self) -> None:
        """Write config.json. Called once the run has really started (its model loaded), so a
        failed start leaves no config behind to refuse the corrected command."""
        text = json.dumps({**self._config, "identity": self._identity}, indent=2) + "\n"
        write_atomic(self.out / CONFIG_FILE, text)

    def close(self) -> None:
        """Release the lock (also released by the kernel when the process dies)."""
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        """Append the records not yet in the folder (a unit is never written twice)."""
        new = [r for r in records if record_key(r) not in self.records]
        for name in (RECORDS_FILE, CONTROLS_FILE):
            rows = [r.to_json() for r in new if records_file(r.scorer) == name]
            if rows:
                self._append(name, rows)
        for record in new:
            self.records[record_key(record)] = record

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

    def run(self) -> Run:
        """What the folder holds now, as the reader would see it."""
        config = _read_json(self.out / CONFIG_FILE)
        return Run(
            self.out,
            config,
            list(self.traces.values()),
            list(self.records.values()),
            None,
            dict(self.scores),
        )
