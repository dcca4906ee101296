"""The read-only reader of a run folder (reports, ``show``): ``load_run`` -> ``Run``.

It is also where folders written by older versions are adapted, once, for everything that
reads them (the writer included): ``adapt_controls``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stepprune.runfolder.errors import RunFolderError
from stepprune.runfolder.jsonl import _parse, _read_json, _read_scores
from stepprune.runfolder.names import (
    CONFIG_FILE,
    CONTROL_OF,
    CONTROLS_FILE,
    RECORDS_FILE,
    REQUIRED_FILES,
    SCORES_FILE,
    SUMMARY_FILE,
    TRACES_FILE,
    RecordKey,
    is_control_spec,
    record_key,
)
from stepprune.schema import Record, Trace


def adapt_controls(records: Iterable[Record], owner: str | None = None) -> list[Record]:
    """``records`` with every random-control record carrying ``control_of``, the scorer it
    controls, as the current version writes them; records that carry it are left as they are.

    Two older forms lack the field:

    - 0.2 (``random-control:seed=S,of=SCORER``): ``control_of`` is the ``of=`` part.
    - before 0.2 (``random-control:seed=S``): those versions wrote one control per unit, with
      the first run's scorer, and reused it for every later --scorer. It is the control of the
      folder's first scorer (that of the first record that is not a control, else ``owner``:
      the scorer the folder's traces were made with), and gets the name the current version
      gives that control (``,of=SCORER`` added), so that a run of that scorer finds its units
      done and a report shows one control per scorer. Without any scorer it stays as it is.

    The files are never rewritten. Records built in memory without the field (by hand) are
    adapted the same way, so this is idempotent.
    """
    records = list(records)
    first = next(
        (r.scorer for r in records if not r.is_control and not is_control_spec(r.scorer)), owner
    )
    adapted = []
    for record in records:
        if record.is_control or not is_control_spec(record.scorer):
            adapted.append(record)
        elif CONTROL_OF in record.scorer:
            adapted.append(replace(record, control_of=record.scorer.split(CONTROL_OF, 1)[1]))
        elif first is not None:
            named = f"{record.scorer}{CONTROL_OF}{first}"
            adapted.append(replace(record, scorer=named, control_of=first))
        else:
            adapted.append(record)
    return adapted


def traces_scorer(traces: Iterable[Trace]) -> str | None:
    """The scorer the folder's first traces were scored with (None when none says)."""
    return next((t.scorer for t in traces if t.scorer), None)


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
    # summary.json as written (see aggregate.Summary.from_json for its typed form): kept raw,
    # since only its presence is needed (whether the run finished).
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
            if not record.is_control:
                return record.scorer
        if self.settings.get("scorer"):
            return str(self.settings["scorer"])
        return next((t.scorer for t in self.traces if t.scorer), "?")

    @property
    def mode(self) -> str:
        if self.settings.get("mode"):
            return str(self.settings["mode"])
        return self.records[0].mode if self.records else "?"

    def scored_trace(self, trace: Trace, scorer: str) -> Trace:
        """``trace`` with its steps' importances under ``scorer`` (for a control's record, pass
        the scorer it controls: ``record.control_of or record.scorer``): a trace holds the
        importances of the scorer it was made with, and scores.jsonl those of scorers run on
        the folder later. Unknown: as it is."""
        importances = self.scores.get((trace.problem_id, trace.sample, scorer))
        if trace.scorer == scorer or importances is None:
            return trace
        steps = [replace(s, importance=v) for s, v in zip(trace.steps, importances, strict=True)]
        return replace(trace, steps=steps, scorer=scorer)

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
    does, so a report never counts a unit twice. Controls of older folders are adapted
    (``adapt_controls``).

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
    read = [
        r for name in (RECORDS_FILE, CONTROLS_FILE) for r in _parse(folder / name, False, Record)
    ]
    records: dict[RecordKey, Record] = {}  # controls.jsonl is optional
    for record in adapt_controls(read, traces_scorer(traces.values())):
        records[record_key(record)] = record
    summary_path = folder / SUMMARY_FILE
    summary = _read_json(summary_path) if summary_path.is_file() else None
    scores = _read_scores(folder / SCORES_FILE, False)
    return Run(folder, config, list(traces.values()), list(records.values()), summary, scores)
