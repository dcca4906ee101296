"""File names of a run folder, its keys, and the one rule for what is a random control.

A control's spec names the scorer it controls (``random-control:seed=S,of=SCORER``), so the
controls of two scorers in one folder are separate units; folders written before 0.2 hold
``random-control:seed=S``, read as the control of the folder's first scorer.
"""

from __future__ import annotations

from collections.abc import Iterable

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
    }
)
# What `stepprune run` writes first, in order; the first one missing is named in the error.
REQUIRED_FILES = (CONFIG_FILE, TRACES_FILE, RECORDS_FILE)

# The random-pruning control that `stepprune run` adds beside every scorer. Its spec is
# ``random-control:seed=S,of=SCORER``: the control of one scorer (it keeps as many steps as that
# scorer at each threshold), so a folder reused with another --scorer gets another control.
# Folders written before 0.2 hold ``random-control:seed=S`` (see ``control_owner``). A user's
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
    """A control spec that names its scorer: ``spec`` itself, or (written before 0.2)
    ``spec`` with ``of=owner`` added."""
    return spec if controlled_scorer(spec) is not None else f"{spec}{_OF}{owner}"


def legacy_owner(records: Iterable[Record]) -> str | None:
    """The scorer that a control without ``of=`` (written before 0.2) belongs to: the folder's
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
