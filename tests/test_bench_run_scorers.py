"""Tests of stepprune.bench.run_scorers (``bench scorers --run``): Spearman against ablation on a
run folder, the cache that makes a re-run resume, its JSON and table.

The run folder is made by ``run_experiment`` with the tiny random Qwen2 and the real R1-distill
tokenizer (two problems of ``--dataset planted:causal``, teacher-forced, so nothing is
generated); its numbers mean nothing except where they are exact by design.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from stepprune.bench.run_scorers import (
    DEFAULT_RUN_SCORERS,
    REFERENCE,
    per_problem_mean,
    run_model_name,
    run_results_markdown,
    run_scorers_benchmark,
    spearman,
)
from stepprune.cli import app
from stepprune.engines import HFEngine
from stepprune.experiment import RunConfig, run_experiment
from stepprune.models import load_model
from stepprune.runfolder import BENCH_SCORERS_FILE, RUN_FILES, read_jsonl
from stepprune.session import Session

THRESHOLDS = (0.0, 0.5)
SPECS = ["length", "position", "ablation"]

# -- statistics -----------------------------------------------------------------------------------


def test_spearman_hand_checked() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ranks [1, 4, 2, 3] and [1, 3, 4, 2]: d = [0, 1, -2, 1], 1 - 6 * 6 / (4 * 15) = 0.4.
    assert spearman([0.1, 0.4, 0.2, 0.3], [1, 3, 4, 2]) == pytest.approx(0.4)
    # Ties share their mean rank: [1.5, 1.5, 3] against [1, 2, 3] -> 1.5 / sqrt(1.5 * 2).
    assert spearman([0.2, 0.2, 0.6], [1, 2, 3]) == pytest.approx(1.5 / math.sqrt(3.0))
    assert math.isnan(spearman([0.5, 0.5], [1, 2]))  # a constant ranking has no correlation
    assert math.isnan(spearman([1.0], [1.0]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def test_per_problem_mean_averages_samples_and_drops_nan() -> None:
    values = {("p", 0): 0.5, ("p", 1): 1.0, ("p", 2): math.nan, ("q", 0): math.nan, ("r", 0): -1}
    assert per_problem_mean(values) == {"p": 0.75, "r": -1.0}


def test_default_list_is_the_planted_one_without_the_reference() -> None:
    assert REFERENCE not in DEFAULT_RUN_SCORERS
    assert {"attention", "entropy", "length", "random"} <= set(DEFAULT_RUN_SCORERS)
    assert BENCH_SCORERS_FILE in RUN_FILES


# -- on a run folder ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_folder(tiny_r1_dir: Path, tmp_path_factory) -> Path:
    """Two causal planted problems scored with ``length`` (the run's own scorer)."""
    out = tmp_path_factory.mktemp("bench-run") / "run"
    config = RunConfig.from_flat(
        model=str(tiny_r1_dir),
        dataset="planted:causal",
        limit=2,
        thresholds=list(THRESHOLDS),
        answer_max_tokens=3,
        device="cpu",
        scorer="length",
        out=str(out),
    )
    quiet = Console(quiet=True)
    run_experiment(config, err=quiet, out=quiet)
    return out


@pytest.fixture(scope="module")
def model(run_folder: Path):
    return load_model(run_model_name(run_folder), "cpu", "float32")


class Calls:
    """Counts ``Session.score`` calls by scorer spec and contexts answered by the engine."""

    def __init__(self, patch: pytest.MonkeyPatch) -> None:
        self.scores: Counter[str] = Counter()
        self.contexts = 0
        score, greedy = Session.score, HFEngine.greedy

        def counting_score(session, trace, problem, scorer=None):
            self.scores[(scorer or session.scorer).spec] += 1
            return score(session, trace, problem, scorer)

        def counting_greedy(engine, contexts, *args, **kwargs):
            self.contexts += len(contexts)
            return greedy(engine, contexts, *args, **kwargs)

        patch.setattr(Session, "score", counting_score)
        patch.setattr(HFEngine, "greedy", counting_greedy)


def _bench(folder: Path, model, calls_patch: pytest.MonkeyPatch) -> tuple[dict, Calls]:
    calls = Calls(calls_patch)
    result = run_scorers_benchmark(
        folder, *model, SPECS, thresholds=THRESHOLDS, answer_max_tokens=3, n_resamples=100
    )
    return result.to_json(), calls


@pytest.fixture
def folder(run_folder: Path, tmp_path: Path) -> Path:
    """A fresh copy of the run folder (the cache starts empty)."""
    copy = tmp_path / "run"
    shutil.copytree(run_folder, copy)
    return copy


@pytest.mark.e2e
def test_first_run_computes_and_caches_then_a_rerun_computes_nothing(
    folder: Path, model, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, calls = _bench(folder, model, monkeypatch)
    # length is the run's own scorer: reused from the traces, never scored again. Ablation is
    # the reference and a listed scorer, scored once; the random control is scored too.
    assert calls.scores == {"ablation": 2, "position": 2, "random:seed=0": 2}
    assert calls.contexts >= 2  # at least the full context of each trace
    rows = [row for _, row in read_jsonl(folder / BENCH_SCORERS_FILE)]
    scored = Counter(row["scorer"] for row in rows if row["kind"] == "scores")
    assert scored == {"ablation": 2, "position": 2, "random:seed=0": 2}
    assert sum(row["kind"] == "answer" for row in rows) == calls.contexts

    again, calls = _bench(folder, model, monkeypatch)
    assert calls.scores == {} and calls.contexts == 0
    assert again == first


@pytest.mark.e2e
def test_spearman_is_computed_from_the_cached_scores(
    folder: Path, model, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _ = _bench(folder, model, monkeypatch)
    rows = [row for _, row in read_jsonl(folder / BENCH_SCORERS_FILE) if row["kind"] == "scores"]
    by = {(row["problem_id"], row["scorer"]): row["importances"] for row in rows}
    traces = [json.loads(line) for line in (folder / "traces.jsonl").read_text().splitlines()]
    expected = []
    for trace in traces:
        position = by[(trace["problem_id"], "position")]
        ablation = by[(trace["problem_id"], "ablation")]
        assert len(position) == len(ablation) == len(trace["steps"])
        expected.append(spearman(position, ablation))
    finite = [v for v in expected if not math.isnan(v)]
    [position] = [s for s in data["scorers"] if s["scorer"] == "position"]
    if finite:
        assert position["spearman"] == pytest.approx(sum(finite) / len(finite))
        assert position["ci95"][0] <= position["spearman"] <= position["ci95"][1]
    else:
        assert position["spearman"] is None  # no correlation: null in the JSON, never NaN
    [ablation] = [s for s in data["scorers"] if s["scorer"] == "ablation"]
    assert ablation["spearman"] is None or ablation["spearman"] == pytest.approx(1.0)


@pytest.mark.e2e
def test_json_keys_and_recovery(folder: Path, model, monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = _bench(folder, model, monkeypatch)
    assert data["reference"] == "ablation" and data["n_traces"] == 2
    assert data["dataset"] == "planted:causal"
    identity = json.loads((folder / "config.json").read_text())["identity"]
    assert identity["dataset"] == "planted-causal"  # the variant is part of the experiment
    assert [s["scorer"] for s in data["scorers"]] == ["length", "position", "ablation"]
    for entry in data["scorers"]:
        assert {"spearman", "ci95", "recovery"} <= set(entry)
        assert list(entry["recovery"]) == ["0.0", "0.5"]
    control = data["random_control"]
    assert control["scorer"] == "random:seed=0"
    # Threshold 0 keeps every step whatever the scores: one answer, the same recovery for all.
    full = {entry["recovery"]["0.0"] for entry in data["scorers"]} | {control["recovery"]["0.0"]}
    assert len(full) == 1
    answers = [row for _, row in read_jsonl(folder / BENCH_SCORERS_FILE) if row["kind"] == "answer"]
    all_kept = [row["correct"] for row in answers if set(row["keep"]) == {"1"}]
    assert len(all_kept) == 2 and full == {sum(all_kept) / 2}
    table = run_results_markdown(run_scorers_benchmark(folder, *model, ["position"], THRESHOLDS))
    assert "| `position` |" in table and "(control)" in table
    oracles = {entry["scorer"]: entry["oracle"] for entry in data["scorers"]}
    assert oracles == {"length": False, "position": False, "ablation": True}
    # These traces are teacher-forced: the token after their answer ends the reference answer,
    # so query=last is an oracle here, and so is a composite that reads it.
    specs = ["attention", "mix:a=attention,b=length", "attention:query=reasoning_end"]
    result = run_scorers_benchmark(folder, *model, specs, THRESHOLDS)
    assert [r.oracle for r in result.scorers] == [True, True, False]


@pytest.mark.e2e
def test_a_torn_line_is_cut_and_a_lost_row_recomputed_alone(
    folder: Path, model, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = _bench(folder, model, monkeypatch)
    path = folder / BENCH_SCORERS_FILE
    lines = path.read_text().splitlines(keepends=True)
    ablation = [i for i, line in enumerate(lines) if '"scorer": "ablation"' in line]
    # Lose the second trace's ablation row, and leave a write cut by a kill at the end.
    kept = [line for i, line in enumerate(lines) if i != ablation[1]]
    path.write_text("".join(kept) + '{"kind": "scores", "problem_id": "pla')
    again, calls = _bench(folder, model, monkeypatch)
    assert calls.scores == {"ablation": 1} and calls.contexts == 0
    assert again == first
    assert all(line.endswith("}\n") for line in path.read_text().splitlines(keepends=True))


@pytest.mark.e2e
def test_cli_loads_the_runs_model_and_prints_json(folder: Path) -> None:
    runner = CliRunner()
    args = ["bench", "scorers", "--run", str(folder), "--scorers", "position", "--json"]
    result = runner.invoke(app, args, env={"HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [s["scorer"] for s in data["scorers"]] == ["position"]
    assert set(data["random_control"]["recovery"]) == {"0.0", "0.5"}
    refused = runner.invoke(app, [*args, "--model", "bundled"])
    assert refused.exit_code == 2
    assert "--model" in refused.output
    missing = runner.invoke(app, ["bench", "scorers", "--run", str(folder / "nope")])
    assert missing.exit_code == 2
    unknown = runner.invoke(app, ["bench", "scorers", "--planted", "nonsense"])
    assert unknown.exit_code == 2 and "semantic or causal" in unknown.output


def test_a_scorer_without_correlation_is_null_in_strict_json() -> None:
    from stepprune.bench.run_scorers import RunScorerResult

    result = RunScorerResult("uniform", math.nan, (math.nan, math.nan), {"0.0": 0.5})
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))  # NaN would raise here
    assert data["spearman"] is None and data["ci95"] == [None, None]


def test_oracles_are_marked() -> None:
    from stepprune.bench.run_scorers import RunBenchResult, RunScorerResult, run_results_markdown

    oracle = RunScorerResult("attribution", 0.8, (0.6, 0.9), {"0.0": 0.5}, oracle=True)
    plain = RunScorerResult("attention", 0.1, (0.0, 0.2), {"0.0": 0.5})
    assert oracle.to_json()["oracle"] is True and plain.to_json()["oracle"] is False
    result = RunBenchResult("run", "m", "d", [oracle, plain], "random:seed=0", {"0.0": 0.5}, 2)
    table = run_results_markdown(result)
    assert "| `attribution` (oracle) | 0.800 |" in table and "| `attention` | 0.100 |" in table
