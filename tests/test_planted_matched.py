"""Tests of the form-matched planted set (stepprune.planted.matched): planted steps are
distractor computations of the same template as the necessary ones, every result is written
once, the answer lists the asked items' results, and form, length and position carry no label."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import pytest

from stepprune.bench.auroc import auroc
from stepprune.planted import (
    MATCHED,
    NECESSARY,
    PLANTED,
    PLANTED_VARIANTS,
    approx_tokens,
    generate_causal,
    generate_matched,
    generate_planted,
    generate_variant,
)
from stepprune.problems import dataset_name, load_problems
from stepprune.schema import Problem, Step, Trace
from stepprune.scorers import SCORERS

EQUATION = re.compile(r"(\d+) ([×+-]) (\d+) = (\d+)")
NUMBER = re.compile(r"\d+")
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b}
PROBLEMS = generate_matched(150, seed=0)


def paragraphs(problem: Problem) -> list[str]:
    assert problem.reasoning is not None
    return problem.reasoning.split("\n\n")


def test_registered_deterministic_and_prefixes() -> None:
    assert MATCHED in PLANTED_VARIANTS
    assert generate_variant(MATCHED, 6, seed=2) == generate_matched(6, seed=2)
    assert generate_matched(5, seed=3) == generate_matched(12, seed=3)[:5]
    assert [p.id for p in generate_matched(2)] == ["matched-000", "matched-001"]
    with pytest.raises(ValueError):
        generate_matched(-1)
    assert load_problems("planted:matched", limit=4) == generate_matched(4)
    assert dataset_name("planted:matched") == "planted-matched"


def test_other_sets_are_unchanged() -> None:
    # Digests of the semantic and causal sets as they were before the matched set existed.
    def digest(problems: list[Problem]) -> str:
        rows = [dataclasses.asdict(p) for p in problems]
        text = json.dumps(rows, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    assert digest(generate_planted(60, seed=0)) == SEMANTIC_DIGEST
    assert digest(generate_causal(60, seed=0)) == CAUSAL_DIGEST


SEMANTIC_DIGEST = "69b8e255fd1db47e"
CAUSAL_DIGEST = "2b8e5ab6fb3c3cd5"


def test_every_step_is_one_calculation_of_the_same_template() -> None:
    for problem in PROBLEMS:
        labels = problem.step_labels
        assert labels is not None and len(labels) == len(paragraphs(problem))
        assert 2 <= labels.count(NECESSARY) <= 3 and 2 <= labels.count(PLANTED) <= 3
        forms = set()
        for text in paragraphs(problem):
            (left, op, right, result), *rest = EQUATION.findall(text)
            assert not rest and OPERATIONS[op](int(left), int(right)) == int(result)
            # Every step of a trace is its theme's template: as many numbers, one "=".
            forms.add((len(NUMBER.findall(text)), text.count("=")))
        assert len(forms) == 1 and forms.pop()[1] == 1


def test_answer_lists_the_asked_results_each_written_once() -> None:
    for problem in PROBLEMS:
        parts, labels = paragraphs(problem), problem.step_labels or []
        results = [EQUATION.findall(t)[0][3] for t in parts]
        asked = [r for r, lab in zip(results, labels, strict=True) if lab == NECESSARY]
        assert problem.answer == ", ".join(asked)
        assert problem.final == f"The answer is \\boxed{{{problem.answer}}}."
        for k, value in enumerate(results):
            elsewhere = [problem.problem] + [t for i, t in enumerate(parts) if i != k]
            assert not any(value in n for t in elsewhere for n in NUMBER.findall(t))
        assert "How many" in problem.problem


def test_form_length_and_position_do_not_predict_the_label() -> None:
    labels = [p.step_labels or [] for p in PROBLEMS]
    texts = [paragraphs(p) for p in PROBLEMS]
    form = [[len(NUMBER.findall(t)) + t.count("=") for t in ts] for ts in texts]
    assert auroc(form, labels) == 0.5
    length = [[approx_tokens(t) for t in ts] for ts in texts]
    assert 0.4 <= auroc(length, labels) <= 0.6
    position = [list(range(len(lab))) for lab in labels]
    assert 0.4 <= auroc(position, labels) <= 0.6


def test_form_scorer_counts_numbers_and_equals() -> None:
    scorer = SCORERS.build("form")
    assert scorer.spec == "form" and not scorer.reads_gold
    texts = ["So 3 + 4 = 7 apples.", "No numbers here at all.", "Then 12 and 5."]
    steps = [Step(index=i, start=i, end=i + 1, text=t) for i, t in enumerate(texts)]
    trace = Trace("p", 0, [], [0, 0, 0], 0, 3, True, True, True, False, steps=steps)
    assert scorer.score(None, trace) == pytest.approx([4 / 6, 0.0, 2 / 6])
