"""Tests of stepprune.report on hand-built traces and records (no model, fast)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from stepprune.report import (
    TABLE_HEADER,
    format_threshold,
    pick_trace_for_plot,
    plot_importance,
    print_summary_table,
    results_markdown,
    summarize,
)
from stepprune.schema import Record, Step, Trace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER_LINE = "| Threshold | Accuracy | Steps Kept | Avg Length | Tokens Kept | Notes |"


def make_trace(
    problem_id: str,
    sample: int = 0,
    *,
    steps: list[Step] | None = None,
    reasoning: tuple[int, int] = (2, 12),
    truncated: bool = False,
    teacher_forced: bool = False,
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
        teacher_forced=teacher_forced,
        truncated=truncated,
        steps=steps or [],
        original_correct=original_correct,
    )


def make_record(
    problem_id: str,
    threshold: float,
    correct: bool,
    *,
    sample: int = 0,
    num_steps: int = 4,
    steps_kept: int = 4,
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
        scorer="attention",
        policy="percentile",
        kept_steps=list(range(steps_kept)),
        num_steps=num_steps,
        steps_kept=steps_kept,
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


def make_steps(importances: list[float | None], labels: list[str | None] | None = None):
    labels = labels or [None] * len(importances)
    return [
        Step(index=i, start=2 + i, end=3 + i, text=f"s{i}", importance=imp, label=lab)
        for i, (imp, lab) in enumerate(zip(importances, labels, strict=True))
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, "0.0"), (0.1, "0.1"), (0.25, "0.25"), (1, "1.0"), (0.1 * 3, "0.3")],
)
def test_format_threshold(value: float, expected: str) -> None:
    assert format_threshold(value) == expected


def test_summarize_counts_and_trace_rates() -> None:
    traces = [
        make_trace("p1", 0, original_correct=True),
        make_trace("p1", 1, truncated=True, original_correct=False),
        make_trace("p2", 0, truncated=True, original_correct=None),  # ungraded
        make_trace("p2", 2, teacher_forced=True, reasoning=(2, 6)),
    ]
    summary = summarize([], traces, model="m", dataset="d")

    assert summary["model"] == "m"
    assert summary["dataset"] == "d"
    assert summary["num_problems"] == len({t.problem_id for t in traces}) == 2
    assert summary["samples"] == max(t.sample for t in traces) + 1 == 3
    assert summary["num_traces"] == 4
    assert summary["truncation_rate"] == pytest.approx(
        sum(t.truncated for t in traces) / len(traces)
    )
    assert summary["truncation_rate"] == pytest.approx(0.5)
    # Only the two graded traces count: one right, one wrong.
    assert summary["original_accuracy"] == pytest.approx(0.5)
    lengths = [t.reasoning_end - t.reasoning_start for t in traces]
    assert summary["avg_reasoning_tokens"] == pytest.approx(sum(lengths) / len(lengths))
    assert summary["thresholds"] == {}


def test_summarize_without_traces_is_none_not_zero() -> None:
    summary = summarize([make_record("p1", 0.0, True)], [], model="m", dataset="d")
    assert summary["num_problems"] == 1
    assert summary["samples"] == 1
    assert summary["truncation_rate"] is None
    assert summary["original_accuracy"] is None
    assert summary["avg_reasoning_tokens"] is None


def test_summarize_original_accuracy_none_when_ungraded() -> None:
    summary = summarize([], [make_trace("p1")], model="m", dataset="d")
    assert summary["original_accuracy"] is None


def test_summarize_per_threshold() -> None:
    records = [
        # threshold 0.0: 3 of 3 correct, everything kept
        make_record("p1", 0.0, True, reasoning_tokens=100, tokens_kept=100, chars_kept=400),
        make_record("p2", 0.0, True, reasoning_tokens=300, tokens_kept=300, chars_kept=1200),
        make_record("p3", 0.0, True, reasoning_tokens=200, tokens_kept=200, chars_kept=800),
        # threshold 0.5: 1 of 3 correct, about half kept
        make_record(
            "p1", 0.5, True, steps_kept=2, reasoning_tokens=100, tokens_kept=40, chars_kept=150,
            answer_tokens=30, answer_truncated=True,
        ),
        make_record(
            "p2", 0.5, False, steps_kept=1, reasoning_tokens=300, tokens_kept=90, chars_kept=300,
            answer_tokens=12,
        ),
        make_record(
            "p3", 0.5, False, num_steps=5, steps_kept=3, reasoning_tokens=200, tokens_kept=110,
            chars_kept=420, answer_tokens=6,
        ),
    ]  # fmt: skip
    summary = summarize(records, [], model="m", dataset="d")

    assert list(summary["thresholds"]) == ["0.0", "0.5"]
    assert summary["num_problems"] == 3
    for key, threshold in (("0.0", 0.0), ("0.5", 0.5)):
        rows = [r for r in records if r.threshold == threshold]
        got = summary["thresholds"][key]
        n_correct = sum(r.correct for r in rows)
        assert got["correct"] == n_correct
        assert got["total"] == len(rows)
        assert got["accuracy"] == pytest.approx(n_correct / len(rows))
        assert got["avg_steps_kept_pct"] == pytest.approx(
            sum(100 * r.steps_kept / r.num_steps for r in rows) / len(rows)
        )
        assert got["avg_output_length"] == pytest.approx(
            sum(r.chars_kept for r in rows) / len(rows)
        )
        assert got["avg_tokens_kept"] == pytest.approx(sum(r.tokens_kept for r in rows) / len(rows))
        # Pooled ratio, not a mean of per-record percentages.
        assert got["avg_tokens_kept_pct"] == pytest.approx(
            100 * sum(r.tokens_kept for r in rows) / sum(r.reasoning_tokens for r in rows)
        )
        assert got["avg_answer_tokens"] == pytest.approx(
            sum(r.answer_tokens for r in rows) / len(rows)
        )
        assert got["answer_truncation_rate"] == pytest.approx(
            sum(r.answer_truncated for r in rows) / len(rows)
        )
    # The pooled ratio differs from the mean of per-record ratios on this data.
    assert summary["thresholds"]["0.5"]["avg_tokens_kept_pct"] == pytest.approx(240 / 600 * 100)
    json.dumps(summary)  # must be serialisable as summary.json


def test_summarize_sorts_and_merges_thresholds() -> None:
    records = [
        make_record("p1", 0.25, True),
        make_record("p1", 0.1 * 3, False),
        make_record("p1", 0.3, True),
        make_record("p1", 0.0, True),
        make_record("p1", 0.1, True),
    ]
    summary = summarize(records, [], model="m", dataset="d")
    assert list(summary["thresholds"]) == ["0.0", "0.1", "0.25", "0.3"]
    assert summary["thresholds"]["0.3"]["total"] == 2


def _two_threshold_summary() -> tuple[dict, list[Record]]:
    records = [
        make_record("p1", 0.0, True, tokens_kept=100, chars_kept=400),
        make_record("p2", 0.0, True, tokens_kept=100, chars_kept=400),
        make_record("p1", 0.5, True, steps_kept=2, tokens_kept=60, chars_kept=200),
        make_record("p2", 0.5, False, steps_kept=1, tokens_kept=40, chars_kept=100),
    ]
    traces = [make_trace("p1", original_correct=True), make_trace("p2", original_correct=False)]
    return summarize(records, traces, model="tiny-model", dataset="aime24"), records


def test_markdown_header_rows_and_deltas() -> None:
    summary, records = _two_threshold_summary()
    md = results_markdown(summary)
    lines = md.splitlines()

    assert lines[0].startswith("# ")
    assert "tiny-model" in lines[0] and "aime24" in lines[0]
    assert HEADER_LINE in lines
    header_at = lines.index(HEADER_LINE)
    assert set(lines[header_at + 1]) <= set("|-: ")
    rows = [line for line in lines[header_at + 2 :] if line.startswith("|")]
    assert len(rows) == 2
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert all(len(c) == len(TABLE_HEADER) for c in cells)

    base, pruned = cells
    assert base[0] == "0.0"
    assert base[1] == "100.0% (2/2)"
    assert base[5] == "baseline (same path as every threshold)"

    half = [r for r in records if r.threshold == 0.5]
    acc = sum(r.correct for r in half) / len(half)
    steps_pct = sum(100 * r.steps_kept / r.num_steps for r in half) / len(half)
    tokens = sum(r.tokens_kept for r in half) / len(half)
    tokens_pct = 100 * sum(r.tokens_kept for r in half) / sum(r.reasoning_tokens for r in half)
    chars = sum(r.chars_kept for r in half) / len(half)
    assert pruned[0] == "0.5"
    assert pruned[1] == f"{100 * acc:.1f}% ({sum(r.correct for r in half)}/{len(half)})"
    assert pruned[1] == "50.0% (1/2)"
    assert pruned[2] == f"{steps_pct:.1f}%"
    assert pruned[3] == f"{chars:.0f}"
    assert pruned[4] == f"{tokens:.0f} ({tokens_pct:.1f}%)"
    # Accuracy 2/2 -> 1/2 is -50 points; tokens 100 -> 50 on average is -50%.
    assert "-50.0 pts acc" in pruned[5]
    assert f"{100 * (tokens - 100) / 100:+.1f}% tokens" in pruned[5]

    # Overview line and explanation paragraph.
    assert "Problems: 2" in md and "traces: 2" in md
    assert "original accuracy: 50.0%" in md
    assert "truncation rate: 0.0%" in md
    assert "characters of kept reasoning" in md
    assert "graded separately" in md


def test_markdown_positive_delta_and_no_zero_row() -> None:
    records = [
        make_record("p1", 0.2, False, tokens_kept=80),
        make_record("p2", 0.2, True, tokens_kept=80),
        make_record("p3", 0.2, False, tokens_kept=80),
        make_record("p1", 0.6, True, tokens_kept=20),
        make_record("p2", 0.6, True, tokens_kept=20),
        make_record("p3", 0.6, False, tokens_kept=20),
    ]
    md = results_markdown(summarize(records, [], model="m", dataset="d"))
    rows = [line for line in md.splitlines() if line.startswith("| 0.")]
    assert len(rows) == 2
    assert "baseline" not in md.split(HEADER_LINE)[1].split("\n\n")[0]
    # Reference is the smallest threshold (0.2): accuracy 1/3 -> 2/3, tokens 80 -> 20.
    expected_pts = 100 * (2 / 3 - 1 / 3)
    expected_tokens = 100 * (20 - 80) / 80
    assert f"+{expected_pts:.1f} pts acc, {expected_tokens:+.1f}% tokens" in rows[1]
    assert "+33.3 pts acc, -75.0% tokens" in rows[1]
    assert "pts acc" not in rows[0]


def test_markdown_with_no_records_still_has_header() -> None:
    md = results_markdown(summarize([], [], model="m", dataset="d"))
    assert HEADER_LINE in md.splitlines()
    assert "original accuracy: n/a" in md


def test_print_summary_table_has_rows() -> None:
    summary, _ = _two_threshold_summary()
    buffer = io.StringIO()
    print_summary_table(summary, Console(file=buffer, width=80, color_system=None))
    out = buffer.getvalue()
    for name in TABLE_HEADER:
        assert name in out
    assert "50.0% (1/2)" in out
    assert "-50.0 pts acc" in out
    # Fits a narrow terminal without cutting a number; the overview line comes after the table.
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    assert out.index("Problems:") > out.index("-50.0 pts acc")


def test_pick_trace_for_plot() -> None:
    assert pick_trace_for_plot([]) is None
    a = make_trace("a", steps=make_steps([0.5, 0.5]))
    b = make_trace("b", steps=make_steps([0.2, 0.3, 0.5]))
    c = make_trace("c", steps=make_steps([0.1, 0.2, 0.7]))
    d = make_trace("d")
    assert pick_trace_for_plot([a, b, c, d]) is b  # ties go to the first
    assert pick_trace_for_plot([d]) is d


@pytest.mark.parametrize(
    "steps",
    [
        make_steps([0.1, 0.4, None, 0.3, 0.2]),
        make_steps([0.3, 0.6, 0.1], ["necessary", "planted", "necessary"]),
        make_steps([1.0]),
        [],
    ],
    ids=["scores", "labels", "one-step", "no-steps"],
)
def test_plot_importance_writes_png(tmp_path: Path, steps: list[Step]) -> None:
    path = tmp_path / "importance.png"
    plot_importance(make_trace("p1", steps=steps), path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000
