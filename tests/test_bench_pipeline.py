"""``bench pipeline``: every stage counted, batched kv in fewer forwards, dry-run counts."""

from __future__ import annotations

import pytest

from stepprune.bench.pipeline import STAGES, Workload, parse_workload, run_pipeline_bench
from tests.test_bench import tiny  # noqa: F401 (fixture)

SMALL = Workload(problems=2, samples=1, tokens=128, thresholds=2, answer_tokens=3, interval=16)


@pytest.mark.e2e
def test_stages_counted_kv_batched_and_dry_run_counts_equal_a_real_run(tiny) -> None:  # noqa: F811
    result = run_pipeline_bench(*tiny, SMALL, step_ms=25.0, measure=2)
    assert set(result["stages"]) == set(STAGES)
    for name, stage in result["stages"].items():
        assert stage["seconds"] >= 0 and stage["projected_seconds"] == pytest.approx(
            stage["forwards"] * 0.025
        )
        assert (stage["forwards"] > 0) == (name != "grading")
        assert (stage["ms_per_forward"] > 0) == (name != "grading")
    kv, before = result["stages"]["kv"], result["kv_unbatched"]
    masks = result["masks_per_trace"]
    # Both traces in one batch: a prefill each, one cue forward, answer_tokens - 1 decode steps.
    assert kv["traces_per_batch"] == SMALL.traces
    assert kv["forwards"] == SMALL.traces + 1 + SMALL.answer_tokens - 1
    assert before["forwards"] == SMALL.traces * (1 + masks * (1 + SMALL.answer_tokens))
    assert masks > 1
    assert kv["rows_per_forward"] > 1
    # Two slots: a prefill each, then tokens - 1 decode steps of both rows.
    assert result["stages"]["traces"]["forwards"] == SMALL.traces + SMALL.tokens - 1
    real = result
    dry = run_pipeline_bench(*tiny, SMALL, measure=2, dry_run=True)
    # The dry run decodes 32 and 64 tokens (2 and 4 intervals) and extrapolates to 128.
    for name in ("traces", "online"):
        assert dry["stages"][name]["extrapolated_from"] == [32, 64]
    for name in ("traces", "scoring", "text", "kv", "online", "grading"):
        assert dry["stages"][name]["forwards"] == real["stages"][name]["forwards"], name
        assert dry["stages"][name]["rows_per_forward"] == pytest.approx(
            real["stages"][name]["rows_per_forward"]
        ), name
    # Online: the thresholds of both traces are rows of one generation: one prefill (the same
    # prompt), then one forward per token (a checkpoint's probe rides in its token's forward).
    online = real["stages"]["online"]
    assert online["traces_per_batch"] == SMALL.traces
    assert online["forwards"] == 1 + SMALL.tokens
    assert online["rows_per_forward"] > SMALL.traces * SMALL.thresholds * 0.9


@pytest.mark.e2e
def test_dry_run_extrapolation_with_scaled_batches_and_an_uneven_length(tiny) -> None:  # noqa: F811
    """Three traces in batches of 2 (one batch measured, scaled by 2), two online groups of
    which one runs, and 72 tokens (not a multiple of the 16-token interval): the dry run's
    counts still equal a real run's. Checkpoint probes ride in their token's forward, as
    tests/test_online_batch.py checks on a model that writes steps."""
    workload = Workload(
        problems=3, samples=1, tokens=72, thresholds=2, answer_tokens=3, interval=16, batch=2
    )
    small_budget = {"kv_batch_mib": 1, "online_batch_mib": 1}
    real = run_pipeline_bench(*tiny, workload, measure=1, **small_budget)
    dry = run_pipeline_bench(*tiny, workload, measure=1, dry_run=True, **small_budget)
    assert real["stages"]["traces"]["scale"] == 2.0
    assert dry["stages"]["online"]["extrapolated_from"] == [32, 64]
    assert dry["stages"]["online"]["seconds"] is None
    for name in STAGES:
        assert dry["stages"][name]["forwards"] == real["stages"][name]["forwards"], name
        assert dry["stages"][name]["rows_per_forward"] == pytest.approx(
            real["stages"][name]["rows_per_forward"]
        ), name


def test_workload_names_and_shapes() -> None:
    assert parse_workload("seed").traces == 120 and parse_workload("seed").tokens == 12288
    assert parse_workload("4x2x2048x6x64") == Workload(4, 2, 2048, 6, 64)
    with pytest.raises(ValueError, match="PxSxT"):
        parse_workload("4x2")
