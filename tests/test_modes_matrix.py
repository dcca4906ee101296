"""Every re-evaluation mode x scorer kind x pruning policy through the run entry point, on a
tiny random Qwen2 with the real R1-distill tokenizer (planted, teacher-forced problems)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepprune.cli import app
from stepprune.policies import POLICIES as POLICY_REGISTRY
from stepprune.runfolder import is_control

pytestmark = pytest.mark.e2e

runner = CliRunner()
MODES = ["text", "kv", "online"]
SCORERS = {
    "attention": "attention",
    "ablation": "ablation",
    "random": "random:seed=0",
    # The scorers of the literature: one that reads logits, one counterfactual, a composition.
    "entropy": "entropy",
    "forced-answer": "forced-answer",
    "mix": "mix:a=(attention:agg=mean),b=entropy,w=0.5",
}
# Scorers that need the finished trace: online mode refuses them before writing anything.
NEEDS_FINISHED_TRACE = {"ablation", "entropy", "forced-answer", "mix"}
POLICIES = ["percentile", "adaptive"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _run(model: Path, out: Path, mode: str, scorer: str, policy: str):
    if mode == "online" and scorer == "attention":
        scorer = "attention:query=probe"  # what online mode can score cached steps with
    args = [
        "run", "--model", str(model), "--device", "cpu", "--limit", "1",
        "--thresholds", "0,0.5", "--answer-max-tokens", "3", "--out", str(out),
        "--mode", mode, "--scorer", scorer, "--policy", policy,
    ]  # fmt: skip
    return runner.invoke(app, args)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("scorer", list(SCORERS))
@pytest.mark.parametrize("mode", MODES)
def test_mode_scorer_policy(
    mode: str, scorer: str, policy: str, tiny_r1_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = _run(tiny_r1_dir, out, mode, SCORERS[scorer], policy)
    if mode == "online" and scorer in NEEDS_FINISHED_TRACE:
        # They need the finished trace (and ablation the answer): no scoring during generation.
        assert result.exit_code == 2, result.output
        assert "--mode online" in result.output and f"'{scorer}" in result.output
        assert not (out / "config.json").exists()
        return
    assert result.exit_code == 0, result.output
    records = _lines(out / "records.jsonl")
    controls = _lines(out / "controls.jsonl")
    assert len(records) == 2  # problems x thresholds
    canonical = POLICY_REGISTRY.build(policy).spec  # records carry the canonical spec
    assert {r["mode"] for r in records} == {mode} and {r["policy"] for r in records} == {canonical}
    specs = {r["scorer"] for r in records}
    assert len(specs) == 1 and not is_control(specs.pop())
    summary = json.loads((out / "summary.json").read_text())
    base, pruned = summary["thresholds"]["0.0"], summary["thresholds"]["0.5"]
    assert base["avg_steps_kept_pct"] == 100.0 and base["total"] == 1
    if mode == "online":
        assert controls == [] and summary.get("random_control") is None
        assert all(r["online"]["checkpoints"] > 0 for r in records)
        for r in records:  # records report what the checkpoints actually kept
            evicted = any(e["steps"] for e in r["online"]["evictions"])
            assert (r["num_kept_steps"] < r["num_steps"]) == evicted
            assert evicted or r["cache_tokens"] == r["full_cache_tokens"]
        assert all(not r["online"]["evictions"] for r in records if r["threshold"] == 0.0)
    else:
        # What the records keep at 0.5 is the policy's choice on the trace's importances (random
        # weights may tie steps at the cut, or spread them so that adaptive's gate keeps all).
        (trace,) = _lines(out / "traces.jsonl")
        chosen = POLICY_REGISTRY.build(policy).keep([s["importance"] for s in trace["steps"]], 0.5)
        (record,) = [r for r in records if r["threshold"] == 0.5]
        assert record["num_kept_steps"] == sum(chosen) and record["num_steps"] == len(chosen)
        assert pruned["avg_steps_kept_pct"] == pytest.approx(100.0 * sum(chosen) / len(chosen))
        assert len(controls) == len(records) and all(is_control(c["scorer"]) for c in controls)
        kept = {(r["problem_id"], r["threshold"]): r["num_kept_steps"] for r in records}
        assert all(kept[(c["problem_id"], c["threshold"])] == c["num_kept_steps"] for c in controls)
        # A random *scorer* is a scorer: it is compared with the control, not mistaken for it.
        assert summary["thresholds"]["0.5"]["random_control_pass1"] is not None
        assert summary["thresholds"]["0.5"]["vs_random"] is not None
    if mode == "kv":
        assert all(r["cache_tokens"] <= r["full_cache_tokens"] for r in records)
