"""Names in a run folder: its files, the keys of its rows, and the name of a control.

A random-control record is told apart by its field ``Record.control_of`` (the scorer it
controls), not by its name; the name matters only as part of the record's key, and to the
reader, which adapts folders written before the field existed (``reader.adapt_controls``).
"""

from __future__ import annotations

from pathlib import Path

from stepprune.schema import Record

CONFIG_FILE = "config.json"
TRACES_FILE = "traces.jsonl"
RECORDS_FILE = "records.jsonl"
SCORES_FILE = "scores.jsonl"
CONTROLS_FILE = "controls.jsonl"
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.md"
IMPORTANCE_PLOT = "importance.png"
LOCK_FILE = ".lock"
# `stepprune bench scorers --run`: the ablation references, scores and graded answers it
# computed on the folder, so that a re-run resumes (see bench.run_scorers).
BENCH_SCORERS_FILE = "bench_scorers.jsonl"
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
        BENCH_SCORERS_FILE,
        "report",
        "config.json.tmp",
        "summary.json.tmp",
        "results.md.tmp",
        "importance.png.tmp",
    }
)
# What `stepprune run` writes first, in order; the first one missing is named in the error.
REQUIRED_FILES = (CONFIG_FILE, TRACES_FILE, RECORDS_FILE)

# The random-pruning control that `stepprune run` adds beside every scorer. Its spec is
# ``random-control:seed=S,of=SCORER``: the control of one scorer (it keeps as many steps as that
# scorer at each threshold), so a folder reused with another --scorer gets another unit.
# A user's own `random` scorer is *not* a control.
CONTROL_SCORER = "random-control"
CONTROL_OF = ",of="

RecordKey = tuple[str, int, str, str]


def control_spec(seed: int, scorer: str) -> str:
    """The spec of the random control of ``scorer``: ``random-control:seed=S,of=SCORER``."""
    return f"{CONTROL_SCORER}:seed={seed}{CONTROL_OF}{scorer}"


def is_control_spec(spec: str) -> bool:
    """Whether ``spec`` is a control's name (``random-control`` or ``random-control:...``).

    Only for names read from a folder written before ``Record.control_of`` (see
    ``reader.adapt_controls``): everywhere else a control is ``record.is_control``.
    """
    return spec == CONTROL_SCORER or spec.startswith(CONTROL_SCORER + ":")


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


def record_file(record: Record) -> str:
    """The file that holds ``record``: controls go to their own file, so that records.jsonl
    holds exactly problems x samples x thresholds for each scorer."""
    return CONTROLS_FILE if record.is_control else RECORDS_FILE


def records_file(scorer: str) -> str:
    """The file for records named ``scorer``, from the name alone: kept for hand-written
    folders (tests/run_fixture.py); the writer uses ``record_file``."""
    return CONTROLS_FILE if is_control_spec(scorer) else RECORDS_FILE


def run_file_in_the_way(path: Path | str) -> Path | None:
    """The run folder whose own file ``path`` is (followed through links), if it is one: a
    command's output written there would destroy the run (``show --html``, ``calibrate
    --out``)."""
    resolved = Path(path).resolve()
    if resolved.name in RUN_FILES and (resolved.parent / CONFIG_FILE).is_file():
        return resolved.parent
    return None
