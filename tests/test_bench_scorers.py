"""Tests of stepprune.bench.scorers and .auroc: AUROC, its bootstrap interval, the benchmark run
and its table.

The run uses a tiny random Qwen2 with the real R1-distill tokenizer, so it is fast and needs no
bundled model; the numbers it produces are meaningless except where they are exact by design
(a constant scorer has AUROC 0.5).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from stepprune.bench.auroc import auroc, auroc_bootstrap_ci, auroc_difference
from stepprune.bench.scorers import (
    DEFAULT_SCORERS,
    ScorerResult,
    results_table_markdown,
    run_scorer_benchmark,
)
from stepprune.engines import HFEngine
from stepprune.planted import NECESSARY as N
from stepprune.planted import PLANTED as P
from stepprune.registry import SpecError
from stepprune.scorers import SCORERS
from stepprune.stats import percentile_interval, resample_indices
from tests.conftest import tiny_model

THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
KEYS = ["0.0", "0.1", "0.2", "0.3", "0.4", "0.5"]

# -- auroc ------------------------------------------------------------------------------------


def test_auroc_perfect_reversed_and_ties() -> None:
    labels = [[N, P, N, P], [P, N]]
    assert auroc([[0.9, 0.1, 0.8, 0.2], [0.3, 0.7]], labels) == 1.0
    assert auroc([[0.1, 0.9, 0.2, 0.8], [0.7, 0.3]], labels) == 0.0
    assert auroc([[0.25] * 4, [0.5, 0.5]], labels) == 0.5


def test_auroc_hand_computed_single_trace() -> None:
    # Ranks within the trace: 0.4 -> 1, 0.1 -> 0, 0.3 -> 2/3, 0.2 -> 1/3. Necessary {1, 1/3}
    # against planted {0, 2/3}: 1 > 0, 1 > 2/3, 1/3 > 0, 1/3 < 2/3, so 3 of 4 pairs.
    assert auroc([[0.4, 0.1, 0.3, 0.2]], [[N, P, P, N]]) == pytest.approx(0.75)


def test_auroc_counts_ties_as_one_half() -> None:
    # Ranks [0.75, 0.75, 0]: the necessary step ties one planted step and beats the other.
    assert auroc([[0.5, 0.5, 0.1]], [[N, P, P]]) == pytest.approx(0.75)


def test_paired_difference_is_narrower_than_separate_intervals() -> None:
    rng = np.random.default_rng(3)
    labels = [[N, P, P, N, P] for _ in range(20)]
    # b is a plus noise: traces that are easy for a are easy for b, which pairing cancels.
    a = [list(rng.normal(size=5) + 1.5 * np.array([1, 0, 0, 1, 0])) for _ in labels]
    b = [list(np.array(x) + 0.3 * rng.normal(size=5)) for x in a]
    difference, (low, high) = auroc_difference(a, b, labels, n_resamples=500, seed=1)
    assert difference == pytest.approx(auroc(a, labels) - auroc(b, labels))
    assert low <= difference <= high
    width_a = np.diff(auroc_bootstrap_ci(a, labels, 500, seed=1))[0]
    width_b = np.diff(auroc_bootstrap_ci(b, labels, 500, seed=1))[0]
    assert high - low < 0.5 * (width_a + width_b)
    # A scorer against itself differs by exactly 0 on every resample.
    assert auroc_difference(a, a, labels, n_resamples=50) == (0.0, (0.0, 0.0))
    # Reversing b negates the difference: 1 - auroc(b) on every resample.
    flipped = [[-x for x in row] for row in b]
    d2, _ = auroc_difference(a, flipped, labels, n_resamples=10)
    assert d2 == pytest.approx(auroc(a, labels) - (1 - auroc(b, labels)))


def test_auroc_pools_within_trace_ranks_not_raw_scores() -> None:
    # Trace 1 ranks [1, 0]; trace 2 ranks [0.5, 0, 1]. Necessary {1, 0, 1} against planted
    # {0, 0.5}: 2 + 0.5 + 2 = 4.5 of 6 pairs. Raw pooled scores would give 4 of 6.
    scores = [[0.6, 0.4], [0.3, 0.2, 0.5]]
    labels = [[N, P], [P, N, N]]
    assert auroc(scores, labels) == pytest.approx(0.75)
    # Rescaling one trace changes nothing: only the order within a trace counts.
    assert auroc([[600.0, 400.0], [0.3, 0.2, 0.5]], labels) == pytest.approx(0.75)


def test_auroc_input_errors() -> None:
    assert math.isnan(auroc([[0.2, 0.8]], [[N, N]]))
    assert math.isnan(auroc([], []))
    with pytest.raises(ValueError, match="labels"):
        auroc([[0.2, 0.8]], [[N]])
    with pytest.raises(ValueError, match="step labels"):
        auroc([[0.2, 0.8]], [[N, "maybe"]])
    with pytest.raises(ValueError, match="finite"):
        auroc([[0.2, math.nan]], [[N, P]])


# -- bootstrap --------------------------------------------------------------------------------


def _noisy_traces(n_traces: int, seed: int) -> tuple[list[list[float]], list[list[str]]]:
    """Traces where necessary steps score higher on average, with a lot of noise."""
    rng = np.random.default_rng(seed)
    scores, labels = [], []
    for _ in range(n_traces):
        trace_labels = [N, N, N, P, P, P]
        shift = np.array([0.5 if label == N else 0.0 for label in trace_labels])
        scores.append((rng.normal(size=6) + shift).tolist())
        labels.append(trace_labels)
    return scores, labels


def test_auroc_bootstrap_ci_contains_the_estimate_and_narrows_with_more_traces() -> None:
    small = _noisy_traces(20, seed=1)
    large = _noisy_traces(400, seed=1)
    low, high = auroc_bootstrap_ci(*small, n_resamples=500)
    assert low <= auroc(*small) <= high
    big_low, big_high = auroc_bootstrap_ci(*large, n_resamples=500)
    assert big_low <= auroc(*large) <= big_high
    assert big_high - big_low < (high - low) / 2


def test_auroc_bootstrap_ci_is_seeded_and_degenerate_for_constant_scores() -> None:
    scores, labels = _noisy_traces(30, seed=2)
    assert auroc_bootstrap_ci(scores, labels, seed=4) == auroc_bootstrap_ci(scores, labels, seed=4)
    assert auroc_bootstrap_ci(scores, labels, seed=4) != auroc_bootstrap_ci(scores, labels, seed=5)
    constant = [[1.0] * len(trace) for trace in scores]
    assert auroc_bootstrap_ci(constant, labels) == (0.5, 0.5)
    with pytest.raises(ValueError):
        auroc_bootstrap_ci(scores, labels, n_resamples=0)


def test_auroc_bootstrap_ci_is_the_shared_bootstrap_over_traces() -> None:
    """Replicates are stats.resample_indices rows of traces, read with percentile_interval."""
    scores, labels = _noisy_traces(12, seed=3)
    expected = percentile_interval(
        [
            auroc([scores[i] for i in row], [labels[i] for i in row])
            for row in resample_indices(12, 300, seed=7)
        ],
        0.9,
    )
    assert auroc_bootstrap_ci(scores, labels, n_resamples=300, seed=7, level=0.9) == expected


# -- the benchmark ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(r1_tokenizer):
    model = tiny_model("qwen2", eos_token_id=r1_tokenizer.eos_token_id)
    model.generation_config.eos_token_id = r1_tokenizer.eos_token_id
    return model, r1_tokenizer


@pytest.fixture(scope="module")
def run(tiny):
    """The benchmark on 4 problems, counting the contexts that reach the engine's greedy."""
    calls: list[int] = []
    real = HFEngine.greedy

    def counting(self, contexts, *args, **kwargs):
        calls.append(len(contexts))
        return real(self, contexts, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HFEngine, "greedy", counting)
        results = run_scorer_benchmark(
            *tiny,
            ["length", "random", "uniform"],
            n_problems=4,
            thresholds=THRESHOLDS,
            answer_max_tokens=4,
            progress=False,
            n_resamples=200,
        )
    return results, calls


@pytest.mark.e2e
def test_run_returns_one_result_per_scorer_with_threshold_keys(run) -> None:
    results, _ = run
    assert [r.scorer for r in results] == ["length", "random:seed=0", "uniform"]
    for result in results:
        assert list(result.recovery) == KEYS
        assert all(0.0 <= value <= 1.0 for value in result.recovery.values())
        assert 0.0 <= result.auroc <= 1.0
        assert result.ci95[0] <= result.auroc <= result.ci95[1]
        assert result.n_traces + result.n_skipped == 4
        low, high = result.lift_over_length_ci95
        assert low - 1e-12 <= result.lift_over_length <= high + 1e-12
        low, high = result.lift_over_position_ci95
        assert low - 1e-12 <= result.lift_over_position <= high + 1e-12
        assert list(result.recovery_ci95) == KEYS
        for key, (low, high) in result.recovery_ci95.items():
            assert 0.0 <= low <= result.recovery[key] <= high <= 1.0
    length = results[0]
    assert length.lift_over_length_ci95 == (0.0, 0.0)  # paired: length minus itself is 0


@pytest.mark.e2e
def test_uniform_scorer_is_exactly_chance_and_length_has_no_lift_over_itself(run) -> None:
    results, _ = run
    length, _, uniform = results
    assert uniform.auroc == 0.5
    assert uniform.ci95 == (0.5, 0.5)
    assert length.lift_over_length == 0.0
    assert uniform.lift_over_length == pytest.approx(0.5 - length.auroc)
    # Uniform scores keep every step at every threshold: one context per trace for all of them.
    assert len(set(uniform.recovery.values())) == 1


@pytest.mark.e2e
def test_answers_are_shared_across_scorers_and_thresholds(run) -> None:
    results, calls = run
    traces = results[0].n_traces
    contexts = sum(calls)
    assert len(calls) == traces  # text mode answers each trace's distinct masks in one call
    # Threshold 0 keeps every step for every scorer, and uniform always does: at most one new
    # context per (trace, pruning scorer, pruning threshold) beyond the full one.
    assert traces <= contexts <= traces * (1 + 2 * (len(THRESHOLDS) - 1))
    assert contexts < 3 * len(THRESHOLDS) * traces


@pytest.mark.e2e
def test_baselines_are_computed_when_not_listed(tiny) -> None:
    [only] = run_scorer_benchmark(
        *tiny, ["uniform"], n_problems=2, thresholds=(0.0,), progress=False, n_resamples=50
    )
    assert only.auroc == 0.5
    assert not math.isnan(only.lift_over_length)
    assert not math.isnan(only.lift_over_position)


@pytest.mark.e2e
def test_causal_variant_runs_and_an_unknown_variant_fails_before_any_work(tiny) -> None:
    [only] = run_scorer_benchmark(
        *tiny,
        ["length"],
        n_problems=2,
        thresholds=(0.0,),
        progress=False,
        n_resamples=50,
        planted="causal",
    )
    assert only.n_traces + only.n_skipped == 2 and only.n_traces > 0
    with pytest.raises(ValueError, match="variant"):
        run_scorer_benchmark(*tiny, ["length"], n_problems=1, planted="nonsense", progress=False)


def test_unknown_specs_and_bad_thresholds_fail_before_any_work(tiny) -> None:
    with pytest.raises(SpecError):
        run_scorer_benchmark(*tiny, ["no-such-scorer"], n_problems=1, progress=False)
    with pytest.raises(SpecError):
        run_scorer_benchmark(*tiny, ["attention:agg=median"], n_problems=1, progress=False)
    with pytest.raises(ValueError):
        run_scorer_benchmark(*tiny, ["length"], n_problems=1, thresholds=(1.5,), progress=False)


def test_default_scorers_build_and_cover_every_family() -> None:
    built = [SCORERS.build(spec) for spec in DEFAULT_SCORERS]
    assert len({b.spec for b in built}) == len(DEFAULT_SCORERS)  # no two specs are the same
    names = {spec.split(":")[0] for spec in DEFAULT_SCORERS}
    assert names == {
        "attention",
        "entropy",
        "redundancy",
        "step-redundancy",
        "forced-answer",
        "attribution",
        "mix",
        "ablation",
        "random",
        "length",
        "position",
        "uniform",
        "form",
    }
    # Every registered scorer is in the default list except resampling (it samples answers).
    assert set(SCORERS.names) - names == {"resampling"}
    queries = {b.query for b in built if b.spec.startswith("attention")}
    assert queries == {"last", "reasoning_end", "answer", "probe"}
    # Oracles: what reads the reference answer, or the teacher-forced answer section.
    oracles = {b.spec.split(":")[0] for b in built if b.oracle_on_teacher_forced}
    assert oracles == {
        "ablation",
        "forced-answer",
        "attribution",
        "attention",
        "mix",
        "step-redundancy",
    }
    assert not SCORERS.build("attention:query=reasoning_end").oracle_on_teacher_forced
    assert not SCORERS.build("attention:query=probe").oracle_on_teacher_forced
    # query=answer and attribution read the model's own answer; answer=reference is the oracle.
    assert not SCORERS.build("attention:query=answer").oracle_on_teacher_forced
    assert SCORERS.build("attention:query=answer,answer=reference").oracle_on_teacher_forced
    assert not SCORERS.build("attribution").oracle_on_teacher_forced
    assert SCORERS.build("attribution:answer=reference").reads_gold


# -- output -----------------------------------------------------------------------------------


def _result(scorer: str, value: float) -> ScorerResult:
    return ScorerResult(
        scorer=scorer,
        auroc=value,
        ci95=(value - 0.1, value + 0.1),
        recovery={"0.0": 1.0, "0.5": 0.5},
        lift_over_length=value - 0.5,
        lift_over_position=value - 0.4,
        n_traces=30,
    )


def test_to_json_keys() -> None:
    data = _result("attention:query=last,layers=all,agg=sum", 0.7).to_json()
    assert list(data) == [
        "scorer",
        "oracle",
        "auroc",
        "ci95",
        "recovery",
        "recovery_ci95",
        "lift_over_length",
        "lift_over_length_ci95",
        "lift_over_position",
        "lift_over_position_ci95",
    ]
    assert data["ci95"] == [pytest.approx(0.6), pytest.approx(0.8)]
    assert data["recovery"] == {"0.0": 1.0, "0.5": 0.5}


def test_results_table_markdown() -> None:
    table = results_table_markdown([_result("length", 0.5), _result("ablation", 0.9)])
    lines = table.splitlines()
    assert lines[0] == (
        "| Scorer | AUROC | 95% CI | lift vs length | lift vs position | recovery @ 0.0 "
        "| recovery @ 0.5 |"
    )
    assert lines[1].count("|") == lines[0].count("|")
    assert lines[2] == "| `length` | 0.500 | [0.400, 0.600] | +0.000 | +0.100 | 100% | 50% |"
    assert lines[3].startswith("| `ablation` | 0.900 | [0.800, 1.000] | +0.400 | +0.500 |")
    assert "30 planted traces" in table and "(oracle)" not in table
    oracle = _result("ablation", 0.9)
    oracle.oracle = True
    table = results_table_markdown([oracle])
    assert table.splitlines()[2].startswith("| `ablation` (oracle) | 0.900 |")
    assert "reads the reference answer" in table
