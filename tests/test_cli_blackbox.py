"""The command line as a black box: a table of bad invocations of every command.

Each case runs ``python -m stepprune ...`` as a real process (own stdout, stderr and exit code)
and expects:

- a non-zero exit code;
- exactly one line on stderr, naming the option, file, line or value (``Case.expect``);
  cases that fail after a model is loaded (``after_load``) may print loading progress first,
  and then end with that one ``error:`` line;
- no "Traceback" anywhere;
- no change to the run folder it points at: every case that names ``{run}`` gets its own copy
  of one real run folder (made once per module with a tiny model), altered by ``setup`` where
  the case is about a damaged folder, and the sha256 of every file in it is compared before
  and after; a fresh ``--out`` (``{new}``) is left without any file but the lock;
- no process left behind (each case runs in its own process group, checked empty after).

Unwritable places that stop root too (the tests run as root, whom chmod does not stop): a path
under a regular file (``plain.txt/sub``), and ``/sys/...`` (sysfs lets nobody create files).
An unreadable file: ``/proc/self/mem`` (reading it gives EIO).

Cases run two or three at a time through a fork server (``tests.processes.ForkServer``): one
interpreter imports stepprune, torch and transformers once, and each case is a child process
forked from it that runs ``python -m stepprune ARGS`` (``runpy``, as the interpreter does) with
its own session, working folder, environment, stdout, stderr and exit status. A case then costs
what its command does (a fraction of a second before a model is loaded) instead of 3-5 s of
imports. The real run folder, and one case of each kind (``INTERPRETER_CASES``), use
``sys.executable -m stepprune`` itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests.processes import Finished, ForkServer, invoke, invoke_interpreter

RUN_ARGS = ("run", "--device", "cpu", "--answer-max-tokens", "4")
# Run commands on the tiny model; a fresh --out, so nothing is written in the working folder.
TINY = (*RUN_ARGS, "--model", "{tiny}", "--limit", "2", "--thresholds", "0,0.5")
FRESH = (*TINY, "--out", "{new}")
CASE_TIMEOUT_S = 240
WORKERS = max(1, min(3, os.cpu_count() or 1))
# The module's cases run once, in the ``results`` fixture, for every case the session
# collected; under pytest-xdist each process collects every case, so the module's tests stay
# on one process (--dist loadgroup), or each process would run all 131 cases (70-85 s each).
pytestmark = pytest.mark.xdist_group("blackbox")


# -- altering a copy of the run folder ------------------------------------------------------------


def _replace_line(name: str, number: int, text: bytes) -> Callable[[Path], None]:
    """Replace line ``number`` (1-based) of ``name``; later lines stay, so it is not the last."""

    def setup(run: Path) -> None:
        lines = (run / name).read_bytes().split(b"\n")
        assert len(lines) > number, f"{name} has too few lines for this case"
        lines[number - 1] = text
        (run / name).write_bytes(b"\n".join(lines))

    return setup


def _write(name: str, text: bytes) -> Callable[[Path], None]:
    def setup(run: Path) -> None:
        (run / name).write_bytes(text)

    return setup


def _remove(name: str) -> Callable[[Path], None]:
    def setup(run: Path) -> None:
        (run / name).unlink()

    return setup


def _record_with(**changes: object) -> Callable[[Path], None]:
    """Line 1 of records.jsonl with some fields changed: valid JSON, every key, wrong types."""

    def setup(run: Path) -> None:
        lines = (run / "records.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        lines[0] = json.dumps({**json.loads(lines[0]), **changes}) + "\n"
        (run / "records.jsonl").write_text("".join(lines), encoding="utf-8")

    return setup


class _Held:
    """``flock`` on the run folder's lock, as a running ``stepprune run`` holds it."""

    def __init__(self, run: Path) -> None:
        self.handle = (run / ".lock").open("a")
        fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def close(self) -> None:
        self.handle.close()


# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad invocation. ``args`` and ``expect`` may name ``{run}`` (this case's copy of the
    run folder), ``{new}`` (a path that does not exist), ``{files}`` (the module's input files)
    and ``{tiny}`` (the tiny model folder)."""

    id: str
    args: tuple[str, ...]
    expect: str
    setup: Callable[[Path], object] | None = None
    after_load: bool = False
    env: dict[str, str] = field(default_factory=dict)
    skip: str | None = None


SKIP_WITH_CUDA = "this machine has CUDA" if torch.cuda.is_available() else None

CASES = [
    # -- run: options ---------------------------------------------------------------------------
    Case("run-samples-0", (*FRESH, "--samples", "0"), "--samples"),
    Case("run-samples-negative", (*FRESH, "--samples", "-2"), "--samples"),
    Case("run-samples-text", (*FRESH, "--samples", "two"), "'--samples'"),
    Case("run-limit-0", (*FRESH, "--limit", "0"), "--limit"),
    Case("run-thresholds-above-1", (*FRESH, "--thresholds", "0,1.5"), "1.5"),
    Case("run-thresholds-negative", (*FRESH, "--thresholds=-0.1"), "-0.1"),
    Case("run-thresholds-text", (*FRESH, "--thresholds", "0,x"), "--thresholds '0,x'"),
    Case("run-thresholds-empty", (*FRESH, "--thresholds", ""), "--thresholds"),
    Case("run-thresholds-nan", (*FRESH, "--thresholds", "nan"), "nan"),
    Case("run-max-new-tokens-0", (*FRESH, "--max-new-tokens", "0"), "--max-new-tokens"),
    Case("run-temperature-negative", (*FRESH, "--temperature", "-1"), "--temperature"),
    Case("run-temperature-nan", (*FRESH, "--temperature", "nan"), "--temperature"),
    Case("run-temperature-inf", (*FRESH, "--temperature", "inf"), "--temperature"),
    Case("run-top-p-0", (*FRESH, "--top-p", "0"), "--top-p"),
    Case("run-top-p-above-1", (*FRESH, "--top-p", "1.5"), "--top-p"),
    Case("run-answer-max-tokens-0", (*FRESH, "--answer-max-tokens", "0"), "--answer-max-tokens"),
    Case("run-seed-text", (*FRESH, "--seed", "abc"), "'--seed'"),
    Case("run-unknown-option", (*FRESH, "--no-such-option"), "--no-such-option"),
    Case("run-scorer-unknown", (*FRESH, "--scorer", "magic"), "'magic'"),
    Case("run-scorer-bad-value", (*FRESH, "--scorer", "attention:agg=max"), "agg='max'"),
    Case("run-scorer-unknown-option", (*FRESH, "--scorer", "attention:bogus=1"), "bogus"),
    Case(
        "run-scorer-repeated-key",
        (*FRESH, "--scorer", "attention:query=last,query=probe"),
        "'query' is given twice",
    ),
    Case("run-scorer-not-key-value", (*FRESH, "--scorer", "attention:query"), "'query'"),
    Case("run-scorer-empty-name", (*FRESH, "--scorer", ":x=1"), "empty strategy name"),
    Case("run-scorer-random-seed", (*FRESH, "--scorer", "random:seed=abc"), "seed='abc'"),
    Case("run-scorer-layers-range", (*FRESH, "--scorer", "attention:layers=99"), "99"),
    Case("run-scorer-receivers-text", (*FRESH, "--scorer", "attention:receivers=x"), "receivers"),
    Case("run-policy-unknown", (*FRESH, "--policy", "magic"), "'magic'"),
    Case("run-segmenter-unknown", (*FRESH, "--segmenter", "magic"), "--segmenter"),
    Case("run-mode-unknown", (*FRESH, "--mode", "magic"), "--mode"),
    Case("run-engine-unknown", (*FRESH, "--engine", "magic"), "magic"),
    Case("run-positions-without-kv", (*FRESH, "--positions", "rerotate"), "--positions"),
    Case("run-positions-unknown", (*FRESH, "--mode", "kv", "--positions", "sideways"), "sideways"),
    Case("run-interval-negative", (*FRESH, "--mode", "online", "--interval", "-1"), "--interval"),
    Case("run-budget-negative", (*FRESH, "--mode", "online", "--budget", "-5"), "--budget"),
    Case("run-budget-without-online", (*FRESH, "--budget", "5"), "--budget"),
    Case("run-online-ablation", (*FRESH, "--mode", "online", "--scorer", "ablation"), "ablation"),
    Case("run-device-bogus", (*FRESH, "--device", "bogus"), "--device bogus"),
    Case("run-device-cuda", (*FRESH, "--device", "cuda"), "--device cuda", skip=SKIP_WITH_CUDA),
    Case("run-device-cuda-index", (*FRESH, "--device", "cuda:x"), "--device cuda:x"),
    Case("run-dtype-unknown", (*FRESH, "--dtype", "float8"), "--dtype float8"),
    Case("run-4bit-on-cpu", (*FRESH, "--load-in-4bit"), "--load-in-4bit"),
    # -- run: models ----------------------------------------------------------------------------
    Case(
        "run-model-missing-gguf",
        (*FRESH, "--model", "{files}/missing.gguf"),
        "{files}/missing.gguf",
    ),
    Case("run-model-garbage-gguf", (*FRESH, "--model", "{files}/garbage.gguf"), "garbage.gguf"),
    Case("run-model-empty-folder", (*FRESH, "--model", "{files}/empty-model"), "empty-model"),
    Case("run-model-bad-config", (*FRESH, "--model", "{files}/bad-config"), "bad-config"),
    Case("run-model-plain-file", (*FRESH, "--model", "{files}/plain.txt"), "plain.txt"),
    Case(
        "run-model-hub-offline",
        (*FRESH, "--model", "no-such-org/no-such-model"),
        "no-such-org/no-such-model",
    ),
    # -- run: datasets --------------------------------------------------------------------------
    Case("run-dataset-missing", (*FRESH, "--dataset", "{files}/missing.jsonl"), "missing.jsonl"),
    Case("run-dataset-unknown-name", (*FRESH, "--dataset", "nope"), "'nope'"),
    Case("run-dataset-folder", (*FRESH, "--dataset", "{files}/folder.jsonl"), "folder.jsonl"),
    Case("run-dataset-unreadable", (*FRESH, "--dataset", "/proc/self/mem"), "/proc/self/mem"),
    Case("run-dataset-not-utf8", (*FRESH, "--dataset", "{files}/latin1.jsonl"), "line 3"),
    Case("run-dataset-bad-json", (*FRESH, "--dataset", "{files}/bad-json.jsonl"), "line 2"),
    Case(
        "run-dataset-missing-field",
        (*FRESH, "--dataset", "{files}/missing-field.jsonl"),
        "line 2: missing or empty field 'answer'",
    ),
    Case(
        "run-dataset-list-answer",
        (*FRESH, "--dataset", "{files}/list-answer.jsonl"),
        "line 1: field 'answer'",
    ),
    Case(
        "run-dataset-duplicate-id",
        (*FRESH, "--dataset", "{files}/duplicate.jsonl"),
        "line 3: duplicate id 'a'",
    ),
    Case("run-dataset-empty", (*FRESH, "--dataset", "{files}/empty.jsonl"), "no problems"),
    Case("run-dataset-array-row", (*FRESH, "--dataset", "{files}/array.jsonl"), "line 1"),
    Case(
        "run-dataset-reasoning-number",
        (*FRESH, "--dataset", "{files}/reasoning-number.jsonl"),
        "field 'reasoning'",
    ),
    Case(
        "run-dataset-labels-mismatch",
        (*FRESH, "--dataset", "{files}/labels.jsonl"),
        "field 'step_labels'",
    ),
    Case(
        "run-data-dir-missing",
        (*FRESH, "--dataset", "aime24", "--data-dir", "{files}/no-such-dir"),
        "no-such-dir",
    ),
    Case("run-builtin-without-data", (*FRESH, "--dataset", "aime24"), "'aime24'"),
    Case(
        "run-data-dir-env-missing",
        (*FRESH, "--dataset", "aime24"),
        "no-such-env-dir",
        env={"STEPPRUNE_DATA_DIR": "{files}/no-such-env-dir"},
    ),
    Case(
        "run-prompt-longer-than-context",
        (*FRESH, "--dataset", "{files}/huge.jsonl"),
        "context",
        after_load=True,
    ),
    # -- run: --out -----------------------------------------------------------------------------
    Case("run-out-is-a-file", (*TINY, "--out", "{files}/plain.txt"), "plain.txt"),
    Case("run-out-under-a-file", (*TINY, "--out", "{files}/plain.txt/sub"), "plain.txt/sub"),
    Case("run-out-unwritable", (*TINY, "--out", "/sys/stepprune-out"), "/sys/stepprune-out"),
    Case(
        "run-out-another-model",
        (*RUN_ARGS, "--model", "bundled", "--limit", "2", "--out", "{run}"),
        "use another --out",
    ),
    Case("run-out-another-seed", (*TINY, "--seed", "7", "--out", "{run}"), "seed"),
    Case("run-out-another-mode", (*TINY, "--mode", "kv", "--out", "{run}"), "mode"),
    Case(
        "run-out-another-dataset",
        (*TINY, "--dataset", "{files}/good.jsonl", "--out", "{run}"),
        "dataset",
    ),
    Case("run-out-held-by-a-run", (*TINY, "--out", "{run}"), "another stepprune run", _Held),
    Case(
        "run-out-record-not-a-record",
        (*TINY, "--out", "{run}"),
        "records.jsonl: line 1",
        _replace_line("records.jsonl", 1, b'{"hello": "world"}'),
    ),
    Case(
        "run-out-record-wrong-types",
        (*TINY, "--out", "{run}"),
        "records.jsonl: line 1",
        _record_with(threshold="abc", sample="x"),
    ),
    Case(
        "run-out-trace-not-a-trace",
        (*TINY, "--out", "{run}"),
        "traces.jsonl: line 1",
        _replace_line("traces.jsonl", 1, b'{"problem_id": "planted-000"}'),
    ),
    Case(
        "run-out-control-not-a-record",
        (*TINY, "--out", "{run}"),
        "controls.jsonl: line 2",
        _replace_line("controls.jsonl", 2, b"[1, 2, 3]"),
    ),
    Case(
        "run-out-record-not-utf8",
        (*TINY, "--out", "{run}"),
        "records.jsonl: line 2",
        _replace_line("records.jsonl", 2, b'{"problem_id": "caf\xe9"}'),
    ),
    Case(
        "run-out-scores-not-scores",
        (*TINY, "--out", "{run}"),
        "scores.jsonl: line 1",
        _write("scores.jsonl", b'{"problem_id": "x"}\n{"problem_id": "y"}\n'),
    ),
    Case(
        "run-out-config-bad-json",
        (*TINY, "--out", "{run}"),
        "config.json",
        _write("config.json", b'{"config": '),
    ),
    # -- report ---------------------------------------------------------------------------------
    Case("report-no-folder", ("report",), "'run_dirs'"),
    Case("report-missing-folder", ("report", "{new}"), "{new}"),
    Case("report-a-file", ("report", "{files}/plain.txt"), "plain.txt"),
    Case("report-second-missing", ("report", "{run}", "{new}"), "{new}"),
    Case("report-no-records", ("report", "{run}"), "records.jsonl", _remove("records.jsonl")),
    Case("report-no-config", ("report", "{run}"), "config.json", _remove("config.json")),
    Case(
        "report-record-not-a-record",
        ("report", "{run}"),
        "records.jsonl: line 1",
        _replace_line("records.jsonl", 1, b'{"hello": "world"}'),
    ),
    Case(
        "report-record-wrong-types",
        ("report", "{run}"),
        "records.jsonl: line 1",
        _record_with(threshold="abc", sample="x"),
    ),
    Case(
        "report-trace-not-a-trace",
        ("report", "{run}"),
        "traces.jsonl: line 1",
        _replace_line("traces.jsonl", 1, b'{"steps": 5}'),
    ),
    Case(
        "report-trace-not-utf8",
        ("report", "{run}"),
        "traces.jsonl: line 1",
        _replace_line("traces.jsonl", 1, b"\xff\xfe"),
    ),
    Case(
        "report-config-not-an-object",
        ("report", "{run}"),
        "config.json",
        _write("config.json", b"[1, 2]"),
    ),
    Case(
        "report-summary-bad-json",
        ("report", "{run}"),
        "summary.json",
        _write("summary.json", b"{"),
    ),
    Case("report-out-a-file", ("report", "{run}", "--out", "{files}/plain.txt"), "plain.txt"),
    Case(
        "report-out-under-a-file",
        ("report", "{run}", "--out", "{files}/plain.txt/report"),
        "plain.txt",
    ),
    Case(
        "report-out-unwritable",
        ("report", "{run}", "--out", "/sys/stepprune-report"),
        "/sys/stepprune-report",
    ),
    # -- show -----------------------------------------------------------------------------------
    Case("show-no-problem-option", ("show", "{run}"), "--problem"),
    Case("show-missing-folder", ("show", "{new}", "--problem", "planted-000"), "{new}"),
    Case("show-unknown-problem", ("show", "{run}", "--problem", "nope"), "'nope'"),
    Case(
        "show-unknown-sample",
        ("show", "{run}", "--problem", "planted-000", "--sample", "7"),
        "sample 7",
    ),
    Case(
        "show-unknown-threshold",
        ("show", "{run}", "--problem", "planted-000", "--threshold", "0.33"),
        "0.33",
    ),
    Case(
        "show-threshold-text",
        ("show", "{run}", "--problem", "planted-000", "--threshold", "abc"),
        "--threshold",
    ),
    Case(
        "show-html-a-folder",
        ("show", "{run}", "--problem", "planted-000", "--html", "{files}"),
        "{files}",
    ),
    Case(
        "show-html-under-a-file",
        ("show", "{run}", "--problem", "planted-000", "--html", "{files}/plain.txt/x.html"),
        "plain.txt/x.html",
    ),
    Case(
        "show-html-unwritable",
        ("show", "{run}", "--problem", "planted-000", "--html", "/sys/stepprune.html"),
        "/sys/stepprune.html",
    ),
    Case(
        "show-html-over-the-records",
        ("show", "{run}", "--problem", "planted-000", "--html", "{run}/records.jsonl"),
        "records.jsonl",
    ),
    Case(
        "show-no-traces",
        ("show", "{run}", "--problem", "planted-000"),
        "traces.jsonl",
        _remove("traces.jsonl"),
    ),
    Case(
        "show-trace-not-a-trace",
        ("show", "{run}", "--problem", "planted-000"),
        "traces.jsonl: line 1",
        _replace_line("traces.jsonl", 1, b'{"problem_id": 3}'),
    ),
    # -- bench ----------------------------------------------------------------------------------
    Case("bench-unknown", ("bench", "magic"), "'magic'"),
    Case("bench-scoring-tokens-small", ("bench", "scoring", "--tokens", "10"), "--tokens"),
    Case("bench-scoring-tokens-text", ("bench", "scoring", "--tokens", "many"), "'--tokens'"),
    Case("bench-scoring-repeats-0", ("bench", "scoring", "--repeats", "0"), "--repeats"),
    Case(
        "bench-scoring-eager-limit-negative",
        ("bench", "scoring", "--eager-limit-gb", "-1"),
        "--eager-limit-gb",
    ),
    Case(
        "bench-scoring-eager-limit-nan",
        ("bench", "scoring", "--eager-limit-gb", "nan"),
        "--eager-limit-gb",
    ),
    Case("bench-scoring-device-bogus", ("bench", "scoring", "--device", "bogus"), "bogus"),
    Case("bench-scoring-dtype-unknown", ("bench", "scoring", "--dtype", "fp8"), "--dtype fp8"),
    Case(
        "bench-scoring-model-missing",
        ("bench", "scoring", "--model", "{files}/missing.gguf"),
        "missing.gguf",
    ),
    Case("bench-kv-tokens-small", ("bench", "kv", "--tokens", "100"), "--tokens"),
    Case("bench-kv-device-bogus", ("bench", "kv", "--device", "bogus"), "bogus"),
    Case("bench-kv-model-empty", ("bench", "kv", "--model", "{files}/empty-model"), "empty-model"),
    Case("bench-scorers-problems-0", ("bench", "scorers", "--problems", "0"), "--problems"),
    Case("bench-scorers-unknown", ("bench", "scorers", "--scorers", "length;magic"), "'magic'"),
    Case(
        "bench-scorers-random-seed",
        ("bench", "scorers", "--scorers", "random:seed=abc"),
        "seed='abc'",
    ),
    Case("bench-scorers-empty", ("bench", "scorers", "--scorers", " ; "), "--scorers"),
    Case("bench-scorers-device-bogus", ("bench", "scorers", "--device", "bogus"), "bogus"),
    Case("unknown-command", ("prune",), "'prune'"),
]


def test_the_table_is_large_and_covers_every_command() -> None:
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    commands = {" ".join(c.args[:2]) if c.args[0] == "bench" else c.args[0] for c in CASES}
    assert commands >= {"run", "report", "show", "bench scoring", "bench kv", "bench scorers"}


# -- inputs -------------------------------------------------------------------------------------


def _jsonl(*rows: object) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def _problem(problem_id: str) -> dict[str, str]:
    return {"id": problem_id, "problem": "What is 1 + 1?", "answer": "2"}


def _write_files(files: Path) -> None:
    files.mkdir()
    (files / "plain.txt").write_text("not a folder\n")
    (files / "folder.jsonl").mkdir()
    (files / "empty-model").mkdir()
    (files / "bad-config").mkdir()
    (files / "bad-config" / "config.json").write_text("{")
    (files / "garbage.gguf").write_bytes(b"this is not a GGUF file\n" * 10)
    (files / "empty.jsonl").write_bytes(b"\n\n")
    good = _jsonl(_problem("a"), _problem("b"))
    (files / "good.jsonl").write_bytes(good)
    latin1 = b'{"id": "c", "problem": "caf\xe9", "answer": "1"}\n'
    (files / "latin1.jsonl").write_bytes(good + latin1)
    (files / "bad-json.jsonl").write_bytes(_jsonl(_problem("a")) + b'{"id": "b", "problem": \n')
    (files / "missing-field.jsonl").write_bytes(_jsonl(_problem("a"), {"id": "b", "problem": "p"}))
    (files / "list-answer.jsonl").write_bytes(_jsonl({**_problem("a"), "answer": [1, 2]}))
    (files / "duplicate.jsonl").write_bytes(_jsonl(_problem("a"), _problem("b"), _problem("a")))
    (files / "array.jsonl").write_bytes(_jsonl([1, 2]))
    (files / "reasoning-number.jsonl").write_bytes(_jsonl({**_problem("a"), "reasoning": 5}))
    (files / "labels.jsonl").write_bytes(
        _jsonl({**_problem("a"), "reasoning": "One.\n\nTwo.", "step_labels": ["necessary"]})
    )
    # Each "1 + " is at least two tokens: at least twice the tiny model's 4096 positions. (It
    # was 5 MiB of text, whose tokenizing took 28 s for the same error.)
    huge = {"id": "huge", "problem": "1 + " * 4096 + "1 = ?", "answer": "1"}
    (files / "huge.jsonl").write_bytes(_jsonl(huge))


def _hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (new and removed files show as differences)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "STEPPRUNE_DATA_DIR"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(COLUMNS="120", PYTHONUNBUFFERED="1", **extra)
    return env


@dataclass
class Result(Finished):
    """How a case ended, and what it left in its copy of the run folder and under {new}."""

    before: dict[str, str] | None = None  # hashes of the case's run folder copy
    after: dict[str, str] | None = None
    new_files: list[str] = field(default_factory=list)  # what is under {new} afterwards


def _run_case(
    case: Case, base: Path, places: dict[str, str], run: Path, server: ForkServer | None
) -> Result:
    """Prepare the case (its copy of the run folder, altered by ``setup``), invoke it, and
    record what it left: hashes of the copy, files under {new}."""
    work = base / case.id
    work.mkdir()
    names = {**places, "new": str(work / "new")}
    before = held = None
    if any("{run}" in a for a in case.args):
        copy = work / "run"
        shutil.copytree(run, copy)
        names["run"] = str(copy)
        if case.setup is not None:
            held = case.setup(copy)
        before = _hashes(copy)
    args = [a.format(**names) for a in case.args]
    env = _environment({k: v.format(**names) for k, v in case.env.items()})
    try:
        if server is None:
            finished = invoke_interpreter(args, work, env, CASE_TIMEOUT_S)
        else:
            finished = invoke(server, args, work, env, CASE_TIMEOUT_S)
    finally:
        if held is not None:
            held.close()
    result = Result(**vars(finished))
    if before is not None:
        result.before, result.after = before, _hashes(Path(names["run"]))
    new = Path(names["new"])
    if new.exists():
        result.new_files = sorted(str(p.relative_to(new)) for p in new.rglob("*"))
    return result


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def places(tmp_path_factory, tiny_r1_dir: Path) -> dict[str, str]:
    files = tmp_path_factory.mktemp("blackbox") / "files"
    _write_files(files)
    return {"files": str(files), "tiny": str(tiny_r1_dir)}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, places: dict[str, str], fork_server) -> tuple[Path, Finished]:
    """One real run folder (tiny model, 2 planted problems, thresholds 0 and 0.5), made by
    ``python -m stepprune run`` (in the fork server)."""
    work = tmp_path_factory.mktemp("blackbox-run")
    args = [a.format(**places, new=str(work / "run")) for a in FRESH]
    result = invoke(fork_server, args, work, _environment({}), CASE_TIMEOUT_S)
    assert result.code == 0 and not result.leftover, result.stderr
    return work / "run", result


@pytest.fixture(scope="module")
def results(request, tmp_path_factory, places, real_run, fork_server) -> dict[str, Result]:
    """Run the selected cases through the fork server, a few at a time; id -> Result."""
    selected = {
        item.callspec.params["case"].id
        for item in request.session.items
        if item.originalname == "test_bad_invocation" and hasattr(item, "callspec")
    }
    cases = [c for c in CASES if c.id in selected and c.skip is None]
    run, _ = real_run
    original = _hashes(run)
    base = tmp_path_factory.mktemp("blackbox-cases")
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {c.id: pool.submit(_run_case, c, base, places, run, fork_server) for c in cases}
        done = {case_id: future.result() for case_id, future in futures.items()}
    # Shown with -s, or under "Captured stdout setup" when a case fails.
    for case_id, result in sorted(done.items(), key=lambda item: -item[1].seconds):
        print(f"{result.seconds:6.1f} s  exit {result.code}  {case_id}")
    assert _hashes(run) == original, "a case changed the shared run folder"
    return done


# -- tests --------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_results_table_goes_to_stdout_progress_to_stderr(real_run) -> None:
    run, process = real_run
    assert "Threshold" in process.stdout and "Accuracy" in process.stdout
    assert "pass@1" in process.stdout
    assert "Threshold" not in process.stderr and "pass@1" not in process.stderr
    assert "done: 2 problems" in process.stderr and "done:" not in process.stdout
    assert "tracing" in process.stderr and "tracing" not in process.stdout
    assert (run / "records.jsonl").is_file()


def _check(case: Case, result: Result, places: dict[str, str]) -> None:
    """What every bad invocation must do (see the module's docstring)."""
    shown = f"exit {result.code} in {result.seconds:.1f} s\nstderr:\n{result.stderr}"
    assert result.code != 0, shown
    assert "Traceback" not in result.stderr + result.stdout, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if case.after_load:
        assert lines and sum(line.startswith("error: ") for line in lines) == 1, shown
        line = lines[-1]
    else:
        assert len(lines) == 1, shown
        line = lines[0]
    assert line.startswith("error: "), shown
    # {new} is the case's own fresh path, ending in /new.
    expect = case.expect.replace("{new}", "/new").format(**places)
    assert expect in line, shown
    assert result.before == result.after, f"the run folder changed\n{shown}"
    assert set(result.new_files) <= {".lock"}, f"--out got {result.new_files}\n{shown}"
    assert not result.leftover, f"a process was left running\n{shown}"
    assert case.after_load or result.seconds < 60, shown


@pytest.mark.e2e
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_invocation(case: Case, results: dict[str, Result], places: dict[str, str]) -> None:
    if case.skip is not None:
        pytest.skip(case.skip)
    _check(case, results[case.id], places)


# The same checks on `python -m stepprune` itself (a fresh interpreter, nothing pre-imported:
# 5-10 s each), for a usage error, an option refused after the imports, and a damaged run folder
# (the fork server runs every case, these among them).
INTERPRETER_CASES = ["run-samples-text", "run-device-bogus", "report-record-not-a-record"]


@pytest.mark.e2e
@pytest.mark.parametrize("case_id", INTERPRETER_CASES)
def test_bad_invocation_of_the_interpreter(
    case_id: str, tmp_path: Path, places: dict[str, str], real_run
) -> None:
    case = next(c for c in CASES if c.id == case_id)
    _check(case, _run_case(case, tmp_path, places, real_run[0], None), places)
