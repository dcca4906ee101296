"""Small run folders written by hand (no model), shared by the report and viewer tests.

The folder has the layout of ``stepprune run --out``: config.json, traces.jsonl, records.jsonl,
controls.jsonl and (optionally) summary.json. Correctness is given per (scorer, threshold,
problem, sample), so the tests can compute every expected number by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

from stepprune.runfolder import CONTROLS_FILE, RECORDS_FILE, records_file
from stepprune.schema import Record, Step, Trace

ATTENTION = "attention:query=last,layers=all,agg=sum"
RANDOM = "random-control:seed=0"  # the control `stepprune run` adds

# Per step: (text, importance, label). Importances sum to 1; step 2 holds a script tag that
# every renderer must escape.
STEPS = [
    ("First, 3 + 4 = 7.", 0.40, "necessary"),
    ("Let me restate: the sum is 7.", 0.10, "planted"),
    ("Careful: <script>alert('x')</script> & 7 < 8.", 0.05, "planted"),
    ("Then 7 * 2 = 14.", 0.45, "necessary"),
]
STEP_TOKENS = [10, 20, 30, 60]  # 120 reasoning tokens; kept shares of steps and tokens differ


def problem_statement(problem_id: str) -> str:
    """The statement stored in each trace (``Trace.problem``)."""
    return f"Problem {problem_id}: what is (3 + 4) * 2?"


def make_trace(
    problem_id: str, sample: int, *, truncated: bool = False, problem: str | None = None
) -> Trace:
    """A trace of the four STEPS; ``problem`` defaults to :func:`problem_statement` ("" makes a
    trace as written before traces carried their problem)."""
    steps, start = [], 5
    for index, ((text, importance, label), size) in enumerate(zip(STEPS, STEP_TOKENS, strict=True)):
        steps.append(Step(index, start, start + size, text, importance, label))
        start += size
    return Trace(
        problem_id=problem_id,
        sample=sample,
        prompt_ids=[1, 2, 3, 4, 5],
        output_ids=list(range(130)),
        reasoning_start=5,
        reasoning_end=start,
        finished_reasoning=not truncated,
        hit_eos=not truncated,
        teacher_forced=False,
        truncated=truncated,
        steps=steps,
        scorer=ATTENTION,
        original_answer="The answer is \\boxed{14}.",
        original_prediction="14",
        original_correct=True,
        problem=problem_statement(problem_id) if problem is None else problem,
    )


def make_record(
    problem_id: str, sample: int, threshold: float, correct: bool, kept: list[int], scorer: str
) -> Record:
    return Record(
        problem_id=problem_id,
        sample=sample,
        threshold=threshold,
        mode="text",
        scorer=scorer,
        policy="percentile",
        kept_steps=kept,
        num_steps=len(STEPS),
        num_kept_steps=len(kept),
        reasoning_tokens=sum(STEP_TOKENS),
        tokens_kept=sum(STEP_TOKENS[i] for i in kept),
        reasoning_chars=sum(len(s[0]) for s in STEPS),
        chars_kept=sum(len(STEPS[i][0]) for i in kept),
        context_tokens=5 + sum(STEP_TOKENS[i] for i in kept),
        answer_text="The answer is \\boxed{14}." if correct else "The answer is \\boxed{<b>9</b>}.",
        answer_tokens=8,
        answer_truncated=False,
        gold="14",
        prediction="14" if correct else "<b>9</b>",
        correct=correct,
    )


# Kept steps per (scorer, threshold): attention drops the two low steps at 0.5 (keeping 70 of 120
# tokens), random two others (keeping 50 of 120).
KEPT = {
    (ATTENTION, 0.0): [0, 1, 2, 3],
    (ATTENTION, 0.5): [0, 3],
    (RANDOM, 0.0): [0, 1, 2, 3],
    (RANDOM, 0.5): [1, 2],
}

# Correctness per (scorer, threshold): problem -> (sample 0, sample 1).
OUTCOMES = {
    (ATTENTION, 0.0): {"p1": (1, 1), "p2": (1, 0), "p3": (1, 1), "p4": (0, 0)},
    (ATTENTION, 0.5): {"p1": (1, 1), "p2": (0, 0), "p3": (1, 0), "p4": (0, 0)},
    (RANDOM, 0.0): {"p1": (1, 1), "p2": (1, 0), "p3": (1, 1), "p4": (0, 0)},
    (RANDOM, 0.5): {"p1": (0, 0), "p2": (0, 0), "p3": (0, 1), "p4": (0, 0)},
}


def write_run(
    folder: Path,
    *,
    model: str = "org/Tiny-Reasoner-1B",
    dataset: str = "aime24",
    with_random: bool = True,
    finished: bool = True,
    extra_config: dict | None = None,
    scorer: str = ATTENTION,
    with_problem: bool = True,
) -> Path:
    """A run of 4 problems x 2 samples x thresholds 0.0 and 0.5 (plus a random control).

    ``scorer`` renames the scorer's records and traces (OUTCOMES and KEPT stay those of
    ATTENTION); ``with_problem=False`` writes traces without their problem statement, as
    folders written before ``Trace.problem`` existed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "model": model,
        "dataset": dataset,
        "data_dir": None,
        "limit": None,
        "samples": 2,
        "thresholds": [0.0, 0.5],
        "seed": 0,
        "scorer": "attention" if scorer == ATTENTION else scorer,
        "policy": "percentile",
        "mode": "text",
        **(extra_config or {}),
    }
    config = {"config": settings, "environment": {}, "identity": {"model": model}}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    traces = [
        make_trace(p, s, truncated=(p, s) == ("p4", 1), problem=None if with_problem else "")
        for p in OUTCOMES[(ATTENTION, 0.0)]
        for s in (0, 1)
    ]
    for trace in traces:
        trace.scorer = scorer
    with (folder / "traces.jsonl").open("w", encoding="utf-8") as handle:
        for trace in traces:
            handle.write(json.dumps(trace.to_json()) + "\n")
    for name in (RECORDS_FILE, CONTROLS_FILE):
        (folder / name).unlink(missing_ok=True)
    for (spec, threshold), outcomes in OUTCOMES.items():
        if spec == RANDOM and not with_random:
            continue
        name = scorer if spec == ATTENTION else spec
        # Control records go to controls.jsonl, as `stepprune run` writes them.
        with (folder / records_file(name)).open("a", encoding="utf-8") as handle:
            for problem_id, samples in outcomes.items():
                for sample, correct in enumerate(samples):
                    record = make_record(
                        problem_id, sample, threshold, bool(correct), KEPT[(spec, threshold)], name
                    )
                    handle.write(json.dumps(record.to_json()) + "\n")
    if finished:
        (folder / "summary.json").write_text(json.dumps({"model": model}), encoding="utf-8")
    return folder


def per_problem(scorer: str, threshold: float) -> dict[str, float]:
    """Expected pass@1 per problem, by hand from OUTCOMES."""
    return {p: sum(v) / len(v) for p, v in OUTCOMES[(scorer, threshold)].items()}
