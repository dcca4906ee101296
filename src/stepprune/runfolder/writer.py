"""The writer of a run folder (``stepprune run``): ``RunFolder``, locked, append-only."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stepprune.runfolder.errors import RunFolderError
from stepprune.runfolder.jsonl import (
    _parse,
    _read_json,
    _read_scores,
    append_jsonl,
    write_atomic,
)
from stepprune.runfolder.names import (
    CONFIG_FILE,
    CONTROLS_FILE,
    LOCK_FILE,
    RECORDS_FILE,
    RUN_FILES,
    SCORES_FILE,
    TRACES_FILE,
    RecordKey,
    record_file,
    record_key,
    threshold_key,
)
from stepprune.runfolder.reader import Run, adapt_controls, traces_scorer
from stepprune.schema import Record, Trace


class RunFolder:
    """Append-only writer of one run folder, held by one process at a time.

    ``identity`` holds the settings that define the experiment (model, dataset content,
    sampling, mode, ...). Opening a folder with a different identity is refused before anything
    is written, so results of different experiments never mix; settings outside it
    (thresholds, samples, limit, scorer) may change. While open, the folder is locked with
    ``flock`` on ``.lock``: a second run is refused, and the kernel drops the lock of a killed one.
    ``option`` names the folder in errors (``--run`` for ``bench scorers --run``).
    """

    def __init__(
        self, out: Path, identity: dict[str, Any], config: dict[str, Any], option: str = "--out"
    ) -> None:
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
            # config.json is written before the first trace: results without it were made
            # under settings nobody can tell, and taking them over would mislabel them.
            orphans = [
                name
                for name in (TRACES_FILE, RECORDS_FILE, CONTROLS_FILE, SCORES_FILE)
                if (self.out / name).is_file() and (self.out / name).stat().st_size
            ]
            if orphans:
                raise RunFolderError(
                    f"--out {self.out}: holds {', '.join(orphans)} but no {CONFIG_FILE}, so "
                    "the settings they were made with are unknown; use another --out"
                )
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._lock = (self.out / LOCK_FILE).open("a")
        except OSError as error:
            raise RunFolderError(
                f"{option} {self.out}: cannot write there ({error.strerror})"
            ) from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RunFolderError(
                f"--out {self.out}: another stepprune run is writing this folder; wait for it "
                "or use another --out"
                if option == "--out"
                else f"{option} {self.out}: a stepprune command (a run or a bench) is writing "
                "this folder; wait for it to finish"
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
        read = [
            r
            for name in (RECORDS_FILE, CONTROLS_FILE)
            for r in _parse(self.out / name, True, Record)
        ]
        self.records: dict[RecordKey, Record] = {}
        # The reader's adaptation: a control written before 0.2 counts as done for the folder's
        # first scorer (its key gains that scorer), as load_run shows it.
        for record in adapt_controls(read, traces_scorer(self.traces.values())):
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
        append_jsonl(self.out / name, rows)

    def add_trace(self, trace: Trace) -> None:
        self._append(TRACES_FILE, [trace.to_json()])
        self.traces[(trace.problem_id, trace.sample)] = trace

    def add_records(self, records: list[Record]) -> None:
        """Append the records not yet in the folder (a unit is never written twice); controls
        go to controls.jsonl.

        A control record made without ``control_of`` (``random-control:seed=S,of=SCORER``
        built by hand) gets it as the reader would give it, so that it is filed and read as
        a control; records of the run carry it already.
        """
        new = [r for r in adapt_controls(records) if record_key(r) not in self.records]
        for name in (RECORDS_FILE, CONTROLS_FILE):
            rows = [r.to_json() for r in new if record_file(r) == name]
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
