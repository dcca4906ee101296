"""Tests of stepprune.aggregate: rows, run figures, summary.json and report.json, by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stepprune.aggregate import (
    Bootstrap,
    aggregate_rows,
    build_report,
    mean,
    run_figures,
    run_labels,
    summary_json,
)
from stepprune.runfolder import control_spec, load_run
from stepprune.schema import Record, Trace
from stepprune.stats import bootstrap_ci, paired_delta
from tests.run_fixture import ATTENTION, RANDOM, per_problem, write_run

CONTROL = control_spec(0, "attention")  # the control of make_record's scorer
# The fixture folder's control (written as before 0.2), as the reader adapts it.
FOLDER_CONTROL = control_spec(0, ATTENTION)

NOTEBOOK_KEYS = {
    "accuracy",
    "correct",
    "total",
    "avg_steps_kept_pct",
    "avg_output_length",
    "avg_tokens_kept",
    "avg_tokens_kept_pct",
    "avg_answer_tokens",
    "answer_truncation_rate",
}


def make_trace(
    problem_id: str,
    sample: int = 0,
    *,
    reasoning: tuple[int, int] = (2, 12),
    truncated: bool = False,
    original_correct: bool | None = None,
) -> Trace:
    return Trace(
        problem_id=problem_id,
        sample=sample,
        prompt_ids=[1, 2],
        output_ids=list(range(12)),
        reasoning_start=reasoning[0],
        reasoning_end=reasoning[1],
        finished_reasoning=not truncated,
        hit_eos=not truncated,
        teacher_forced=False,
        truncated=truncated,
        original_correct=original_correct,
    )


def make_record(
    problem_id: str,
    threshold: float,
    correct: bool,
    *,
    sample: int = 0,
    scorer: str = "attention",
    num_steps: int = 4,
    kept: int = 4,
    reasoning_tokens: int = 100,
    tokens_kept: int = 100,
    chars_kept: int = 400,
    answer_tokens: int = 10,
    answer_truncated: bool = False,
) -> Record:
    return Record(
        problem_id=problem_id,
        sample=sample,
        threshold=threshold,
        mode="text",
        scorer=scorer,
        policy="percentile",
        kept_steps=list(range(kept)),
        num_steps=num_steps,
        num_kept_steps=kept,
        reasoning_tokens=reasoning_tokens,
        tokens_kept=tokens_kept,
        reasoning_chars=4 * reasoning_tokens,
        chars_kept=chars_kept,
        context_tokens=50 + tokens_kept,
        answer_text="42",
        answer_tokens=answer_tokens,
        answer_truncated=answer_truncated,
        gold="42",
        prediction="42" if correct else "7",
        correct=correct,
    )


def summarize(
    records: list[Record], traces: list[Trace], control: str | None = None
) -> dict[str, Any]:
    return summary_json(
        records, traces, model="m", dataset="d", scorer="attention", control=control,
        policy="percentile", mode="text",
    )  # fmt: skip


def test_mean_of_nothing_is_none() -> None:
    assert mean([]) is None
    assert mean([1, 2]) == 1.5


# -- run figures and the notebook's summary keys -----------------------------------------------


def test_run_figures_counts_and_trace_rates() -> None:
    traces = [
        make_trace("p1", 0, original_correct=True),
        make_trace("p1", 1, truncated=True, original_correct=False),
        make_trace("p2", 0, truncated=True, original_correct=None),  # ungraded
        make_trace("p2", 2, reasoning=(2, 6)),
    ]
    summary = summarize([], traces)
    assert (summary["model"], summary["dataset"]) == ("m", "d")
    assert summary["num_problems"] == 2
    assert summary["samples"] == 3  # largest sample index + 1
    assert summary["num_traces"] == 4
    assert summary["truncation_rate"] == pytest.approx(0.5)
    assert summary["original_accuracy"] == pytest.approx(0.5)  # graded traces only
    assert summary["avg_reasoning_tokens"] == pytest.approx((10 + 10 + 10 + 4) / 4)
    assert summary["thresholds"] == {}
    # Per problem then over problems: p1 is 1/2 right, p2 has no graded trace.
    figures = run_figures(traces, [])
    assert figures.original_pass1 == pytest.approx(0.5)
    assert figures.original_pass1_ci == (0.5, 0.5)


def test_without_traces_figures_are_none_not_zero() -> None:
    summary = summarize([make_record("p1", 0.0, True)], [])
    assert (summary["num_problems"], summary["samples"]) == (1, 1)
    assert summary["truncation_rate"] is None
    assert summary["original_accuracy"] is None
    assert summary["avg_reasoning_tokens"] is None
    figures = run_figures([], [])
    assert (figures.num_problems, figures.samples, figures.original_pass1) == (0, 0, None)


def test_summary_per_threshold_notebook_keys() -> None:
    records = [
        make_record("p1", 0.0, True, reasoning_tokens=100, tokens_kept=100, chars_kept=400),
        make_record("p2", 0.0, True, reasoning_tokens=300, tokens_kept=300, chars_kept=1200),
        make_record("p3", 0.0, True, reasoning_tokens=200, tokens_kept=200, chars_kept=800),
        make_record(
            "p1", 0.5, True, kept=2, reasoning_tokens=100, tokens_kept=40, chars_kept=150,
            answer_tokens=30, answer_truncated=True,
        ),
        make_record(
            "p2", 0.5, False, kept=1, reasoning_tokens=300, tokens_kept=90, chars_kept=300,
            answer_tokens=12,
        ),
        make_record(
            "p3", 0.5, False, num_steps=5, kept=3, reasoning_tokens=200, tokens_kept=110,
            chars_kept=420, answer_tokens=6,
        ),
    ]  # fmt: skip
    summary = summarize(records, [])
    assert list(summary["thresholds"]) == ["0.0", "0.5"]
    for key, threshold in (("0.0", 0.0), ("0.5", 0.5)):
        rows = [r for r in records if r.threshold == threshold]
        got = summary["thresholds"][key]
        assert set(got) >= NOTEBOOK_KEYS
        n_correct = sum(r.correct for r in rows)
        assert (got["correct"], got["total"]) == (n_correct, len(rows))
        assert got["accuracy"] == pytest.approx(n_correct / len(rows))
        assert got["avg_steps_kept_pct"] == pytest.approx(
            sum(100 * r.num_kept_steps / r.num_steps for r in rows) / len(rows)
        )
        assert got["avg_output_length"] == pytest.approx(sum(r.chars_kept for r in rows) / 3)
        assert got["avg_tokens_kept"] == pytest.approx(sum(r.tokens_kept for r in rows) / 3)
        assert got["avg_answer_tokens"] == pytest.approx(sum(r.answer_tokens for r in rows) / 3)
        assert got["answer_truncation_rate"] == pytest.approx(
            sum(r.answer_truncated for r in rows) / 3
        )
        # One sample per problem: pass@1 is the accuracy.
        assert got["pass1"] == pytest.approx(got["accuracy"])
    # Pooled ratio (240 of 600 tokens), not the mean of per-record ratios (about 37.7%).
    assert summary["thresholds"]["0.5"]["avg_tokens_kept_pct"] == pytest.approx(40.0)
    json.dumps(summary)  # serialisable as summary.json


def test_summary_gains_pass1_ci_and_the_control_per_threshold() -> None:
    """summary.json has pass1, pass1_ci and random_control_pass1 (with CI and vs_random) per
    threshold, computed like the report's rows."""
    records = []
    for (scorer, threshold), outcomes in {
        ("attention", 0.0): {"p1": 1, "p2": 1, "p3": 0, "p4": 1},
        ("attention", 0.5): {"p1": 1, "p2": 0, "p3": 0, "p4": 1},
        (CONTROL, 0.0): {"p1": 1, "p2": 1, "p3": 0, "p4": 1},
        (CONTROL, 0.5): {"p1": 0, "p2": 0, "p3": 0, "p4": 1},
    }.items():
        for pid, ok in outcomes.items():
            records.append(make_record(pid, threshold, bool(ok), scorer=scorer))
    summary = summarize(records, [], control=CONTROL)
    half = summary["thresholds"]["0.5"]
    assert half["pass1"] == pytest.approx(0.5)
    assert half["pass1_ci"] == list(bootstrap_ci([1.0, 0.0, 0.0, 1.0]))
    assert half["random_control_pass1"] == pytest.approx(0.25)
    assert half["random_control_pass1_ci"] == list(bootstrap_ci([0.0, 0.0, 0.0, 1.0]))
    delta, ci = paired_delta(
        {"p1": 1.0, "p2": 0.0, "p3": 0.0, "p4": 1.0}, {"p1": 0.0, "p2": 0.0, "p3": 0.0, "p4": 1.0}
    )
    assert half["vs_random"] == pytest.approx(delta) == pytest.approx(0.25)
    assert half["vs_random_ci"] == list(ci)
    # The control's own block keeps today's keys (and gains its pass@1), never vs itself.
    assert summary["random_control"]["scorer"] == CONTROL
    assert summary["random_control"]["0.5"]["total"] == 4
    assert summary["random_control"]["0.5"]["pass1"] == pytest.approx(0.25)
    assert "vs_random" not in summary["random_control"]["0.5"]
    assert list(summary)[-3:] == ["scorer", "policy", "mode"]
    json.dumps(summary)


def test_summary_without_control_has_none_in_the_control_keys() -> None:
    summary = summarize([make_record("p1", 0.0, True), make_record("p2", 0.0, False)], [])
    row = summary["thresholds"]["0.0"]
    assert row["pass1"] == 0.5 and row["pass1_ci"] == list(bootstrap_ci([1.0, 0.0]))
    for key in ("random_control_pass1", "random_control_pass1_ci", "vs_random", "vs_random_ci"):
        assert row[key] is None
    assert "random_control" not in summary


def test_summary_reads_only_its_scorer_and_control() -> None:
    records = [
        make_record("p1", 0.0, True),
        make_record("p1", 0.0, False, scorer="length"),
        make_record("p1", 0.0, False, scorer=control_spec(0, "length")),  # length's control
        make_record("p1", 0.0, False, scorer=control_spec(1, "attention")),  # another seed
    ]
    summary = summarize(records, [], control=CONTROL)
    assert summary["thresholds"]["0.0"]["total"] == 1
    assert summary["thresholds"]["0.0"]["random_control_pass1"] is None
    assert summary["random_control"] == {"scorer": CONTROL}


def test_threshold_arithmetic_lands_in_one_row_keyed_0_3() -> None:
    """0.1 * 3 (0.30000000000000004) and 0.3 are one threshold, keyed "0.3"."""
    records = [
        make_record("p1", 0.25, True),
        make_record("p1", 0.1 * 3, False),
        make_record("p2", 0.3, True),
        make_record("p1", 0.0, True),
        make_record("p1", 0.1, True),
    ]
    summary = summarize(records, [])
    assert list(summary["thresholds"]) == ["0.0", "0.1", "0.25", "0.3"]
    assert summary["thresholds"]["0.3"]["total"] == 2
    rows = aggregate_rows(records)
    assert [r.key for r in rows] == ["0.0", "0.1", "0.25", "0.3"]
    assert rows[-1].threshold == 0.3 and rows[-1].records == 2 and rows[-1].problems == 2


# -- rows of a run folder ------------------------------------------------------------------------


def test_rows_numbers_by_hand(tmp_path: Path) -> None:
    rows = aggregate_rows(load_run(write_run(tmp_path / "run")).records, "label")
    assert [(r.scorer, r.threshold, r.control_of) for r in rows] == [
        (ATTENTION, 0.0, None),
        (ATTENTION, 0.5, None),
        (FOLDER_CONTROL, 0.0, ATTENTION),
        (FOLDER_CONTROL, 0.5, ATTENTION),
    ]
    base, pruned, random_base, random_pruned = rows
    assert base.run == "label"

    # pass@1 = mean over problems of the mean over samples: (1 + .5 + 1 + 0) / 4.
    assert base.pass1 == pytest.approx(0.625)
    assert base.pass1_ci == bootstrap_ci(list(per_problem(ATTENTION, 0.0).values()))
    assert (base.problems, base.records, base.correct) == (4, 8, 5)
    assert base.delta is None and base.reference_threshold == 0.0

    # 0.5: (1 + 0 + .5 + 0) / 4; paired against 0.0: (0 - .5 - .5 + 0) / 4.
    assert pruned.pass1 == pytest.approx(0.375)
    assert (pruned.delta, pruned.delta_ci) == paired_delta(
        per_problem(ATTENTION, 0.5), per_problem(ATTENTION, 0.0)
    )
    assert pruned.delta == pytest.approx(-0.25)
    assert pruned.per_problem == per_problem(ATTENTION, 0.5)

    # Steps 0 and 3 kept: 10 + 60 of 120 tokens, 2 of 4 steps.
    assert pruned.kept_fraction == pytest.approx(70 / 120)
    assert pruned.steps_kept_fraction == pytest.approx(0.5)
    assert pruned.avg_steps_kept_pct == pytest.approx(50.0)
    assert pruned.tokens_saved == pytest.approx(50.0)
    assert pruned.tokens_saved_fraction == pytest.approx(50 / 120)
    assert pruned.tokens_kept_pct == pytest.approx(100 * 70 / 120)
    assert base.kept_fraction == pytest.approx(1.0) and base.tokens_saved == 0.0

    # Random control beside the attention row: (0 + 0 + .5 + 0) / 4; attention - random.
    assert pruned.control_pass1 == pytest.approx(0.125)
    assert pruned.control_kept_fraction == pytest.approx(50 / 120)  # steps 1 and 2
    assert (pruned.vs_control, pruned.vs_control_ci) == paired_delta(
        per_problem(ATTENTION, 0.5), per_problem(RANDOM, 0.5)
    )
    assert pruned.vs_control == pytest.approx(0.25)
    assert base.vs_control == 0.0 and base.vs_control_ci == (0.0, 0.0)

    # Control rows are rows of their own, never compared with themselves.
    assert random_base.is_control and random_pruned.is_control
    assert random_pruned.pass1 == pytest.approx(0.125)
    assert random_pruned.delta == pytest.approx(0.125 - 0.625)
    assert random_pruned.control_pass1 is None and random_pruned.vs_control is None


def test_a_random_scorer_is_a_scorer_and_only_random_control_is_the_control(
    tmp_path: Path,
) -> None:
    """`--scorer random:seed=0` with its `random-control:seed=0` control: the scorer's rows are
    scorer rows, compared with the control; only the control's rows are control rows."""
    run = load_run(write_run(tmp_path / "run", scorer="random:seed=0"))
    rows = aggregate_rows(run.records)
    control = control_spec(0, "random:seed=0")  # the fixture's control, adapted by the reader
    assert [(r.scorer, r.is_control) for r in rows] == [
        ("random:seed=0", False),
        ("random:seed=0", False),
        (control, True),
        (control, True),
    ]
    pruned = rows[1]
    assert pruned.control_pass1 == pytest.approx(0.125)
    assert pruned.vs_control == pytest.approx(0.25)
    summary = summary_json(
        run.records, run.traces, model="m", dataset="d", scorer="random:seed=0", control=control,
        policy="percentile", mode="text",
    )  # fmt: skip
    assert summary["thresholds"]["0.5"]["random_control_pass1"] == pytest.approx(0.125)
    assert summary["thresholds"]["0.5"]["vs_random"] == pytest.approx(0.25)
    assert summary["random_control"]["0.5"]["pass1"] == pytest.approx(0.125)


def test_several_control_seeds_are_pooled(tmp_path: Path) -> None:
    records = [
        make_record("p1", 0.5, True),
        make_record("p1", 0.5, True, scorer=control_spec(0, "attention")),
        make_record("p1", 0.5, False, scorer=control_spec(1, "attention"), sample=1),
    ]
    (row, *_) = aggregate_rows(records)
    assert row.control_pass1 == pytest.approx(0.5)


def test_reference_is_the_smallest_threshold_without_zero() -> None:
    records = [make_record("p1", 0.5, True), make_record("p1", 0.2, False)]
    low, high = aggregate_rows(records)
    assert (low.threshold, low.delta) == (0.2, None)
    assert high.reference_threshold == 0.2 and high.delta == pytest.approx(1.0)


def test_bootstrap_settings_reach_every_interval(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "run"))
    boot = Bootstrap(n_resamples=300, seed=5, level=0.8)
    pruned = aggregate_rows(run.records, bootstrap=boot)[1]
    values = list(per_problem(ATTENTION, 0.5).values())
    assert pruned.pass1_ci == bootstrap_ci(values, 300, 5, 0.8)
    assert (
        pruned.vs_control_ci
        == paired_delta(per_problem(ATTENTION, 0.5), per_problem(RANDOM, 0.5), 300, 5, 0.8)[1]
    )


# -- report.json ---------------------------------------------------------------------------------


def test_labels_tell_runs_apart(tmp_path: Path) -> None:
    a = load_run(write_run(tmp_path / "a", model="org/Model-A"))
    b = load_run(write_run(tmp_path / "b", model="/local/models/Model-B.gguf"))
    assert run_labels([a, b]) == ["Model-A · attention · text", "Model-B · attention · text"]
    c = load_run(write_run(tmp_path / "c", model="org/Model-A"))
    assert run_labels([a, c]) == [
        "Model-A · attention · text (a)",
        "Model-A · attention · text (c)",
    ]
    d = load_run(write_run(tmp_path / "d", model="org/Model-A", dataset="math500"))
    assert run_labels([a, d]) == [
        "Model-A · aime24 · attention · text",
        "Model-A · math500 · attention · text",
    ]


def test_build_report_runs_and_statistics(tmp_path: Path) -> None:
    a = load_run(write_run(tmp_path / "a"))
    b = load_run(write_run(tmp_path / "b", finished=False, with_random=False))
    report = build_report([a, b])
    assert report["statistics"]["n_resamples"] == 2000 and report["statistics"]["level"] == 0.95
    first, second = report["runs"]
    assert (first["finished"], second["finished"]) == (True, False)
    assert (first["num_problems"], first["samples"], first["num_traces"]) == (4, 2, 8)
    assert first["truncation_rate"] == pytest.approx(1 / 8)
    assert first["original_pass1"] == 1.0 and first["original_accuracy"] == 1.0
    assert [row["pass1"] for row in first["rows"]] == [
        r.pass1 for r in aggregate_rows(a.records, first["label"])
    ]
    assert len(second["rows"]) == 2
    json.dumps(report)
