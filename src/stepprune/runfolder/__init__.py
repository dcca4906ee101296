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
    bench_scorers.jsonl  `stepprune bench scorers --run`: its ablation references, scores and
                     graded answers (a re-run resumes from them)

Lines are appended, flushed and fsynced one unit at a time. A run killed mid-write leaves at
most one partial last line: the writer cuts it when it opens the folder, the reader skips it.

``RunFolder`` is the writer (``stepprune run``); ``load_run`` the read-only reader (reports,
``show``). Both use the same keys (``threshold_key``, ``record_key``) and see a folder alike:
a random-control record is one whose ``Record.control_of`` names the scorer it controls, and
controls of folders written before that field are adapted once, as they are read
(``adapt_controls``).
"""

from stepprune.runfolder.errors import RunFolderError
from stepprune.runfolder.jsonl import append_jsonl, read_jsonl, write_atomic
from stepprune.runfolder.names import (
    BENCH_SCORERS_FILE,
    CONFIG_FILE,
    CONTROL_SCORER,
    CONTROLS_FILE,
    IMPORTANCE_PLOT,
    LOCK_FILE,
    RECORDS_FILE,
    REQUIRED_FILES,
    RESULTS_FILE,
    RUN_FILES,
    SCORES_FILE,
    SUMMARY_FILE,
    TRACES_FILE,
    RecordKey,
    control_spec,
    is_control_spec,
    record_file,
    record_key,
    records_file,
    run_file_in_the_way,
    threshold_key,
)
from stepprune.runfolder.reader import Run, adapt_controls, load_run
from stepprune.runfolder.writer import RunFolder

# Kept for callers of the name-based rule (tests/test_modes_matrix.py reads JSON rows): in the
# package a control is ``record.is_control``.
is_control = is_control_spec

__all__ = [
    "BENCH_SCORERS_FILE",
    "CONFIG_FILE",
    "CONTROL_SCORER",
    "CONTROLS_FILE",
    "IMPORTANCE_PLOT",
    "LOCK_FILE",
    "RECORDS_FILE",
    "REQUIRED_FILES",
    "RESULTS_FILE",
    "RUN_FILES",
    "SCORES_FILE",
    "SUMMARY_FILE",
    "TRACES_FILE",
    "RecordKey",
    "Run",
    "RunFolder",
    "RunFolderError",
    "adapt_controls",
    "append_jsonl",
    "control_spec",
    "is_control",
    "is_control_spec",
    "load_run",
    "read_jsonl",
    "record_file",
    "record_key",
    "records_file",
    "run_file_in_the_way",
    "threshold_key",
    "write_atomic",
]
