"""Tests of the causal planted set (stepprune.planted.causal): every necessary step carries a
value of the answer that no other text has, planted steps carry none, length and position are
matched, and ``--dataset planted:causal`` loads it."""

from __future__ import annotations

import functools
import re
import statistics

import pytest

from stepprune.bench.auroc import auroc
from stepprune.grading import _grade_in_worker
from stepprune.planted import (
    LENGTH_TOLERANCE,
    NECESSARY,
    PLANTED,
    approx_tokens,
    generate_causal,
    generate_planted,
    generate_variant,
)
from stepprune.planted.causal_scenarios import THEMES
from stepprune.problems import DatasetError, dataset_name, load_problems
from stepprune.schema import Problem
from stepprune.steps import attach_labels, segment_steps

EQUATION = re.compile(r"(\d+) ([×÷+-]) (\d+) = (\d+)")
NUMBER = re.compile(r"\d+")
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b}


@functools.cache
def problems() -> list[Problem]:
    """The 120 problems the tests read, made once per test process on first use, not at
    collection (every xdist worker collects every module)."""
    return generate_causal(120, seed=0)


def paragraphs(problem: Problem) -> list[str]:
    assert problem.reasoning is not None
    return problem.reasoning.split("\n\n")


def labelled(problem: Problem, label: str) -> list[str]:
    assert problem.step_labels is not None
    return [
        t for t, lab in zip(paragraphs(problem), problem.step_labels, strict=True) if lab == label
    ]


def values(problem: Problem) -> list[str]:
    return problem.answer.split(", ")


def test_same_seed_same_problems_and_prefixes() -> None:
    assert generate_causal(20, seed=5) == generate_causal(20, seed=5)
    assert generate_causal(5, seed=3) == generate_causal(12, seed=3)[:5]
    first, second = generate_causal(10, seed=0), generate_causal(10, seed=1)
    assert [p.reasoning for p in first] != [p.reasoning for p in second]


def test_ids_count_and_variants() -> None:
    assert [p.id for p in generate_causal(2)] == ["causal-000", "causal-001"]
    assert generate_causal(0) == []
    with pytest.raises(ValueError):
        generate_causal(-1)
    assert generate_variant("causal", 4, seed=2) == generate_causal(4, seed=2)
    assert generate_variant("semantic", 4, seed=2) == generate_planted(4, seed=2)
    with pytest.raises(ValueError, match="variant"):
        generate_variant("nonsense", 1)


def test_labels_align_with_paragraphs() -> None:
    for problem in problems():
        parts, labels = paragraphs(problem), problem.step_labels
        assert labels is not None and len(labels) == len(parts)
        assert 2 <= labels.count(NECESSARY) <= 4
        assert 2 <= labels.count(PLANTED) <= 4
        assert all(len(p) >= 30 and p == p.strip() and "\n" not in p for p in parts)


def test_answer_is_the_list_of_the_necessary_results_in_order() -> None:
    for problem in problems():
        results = []
        for step in labelled(problem, NECESSARY):
            [(left, op, right, result)] = EQUATION.findall(step)
            assert OPERATIONS[op](int(left), int(right)) == int(result), step
            # Operands are givens of the question: no step builds on another's result.
            assert re.search(rf"\b{left}\b", problem.problem), (step, problem.problem)
            assert re.search(rf"\b{right}\b", problem.problem), (step, problem.problem)
            results.append(result)
        assert problem.answer == ", ".join(results)
        assert problem.final == f"The answer is \\boxed{{{problem.answer}}}."
        assert all(10 <= int(v) <= 99 for v in results)


def test_each_value_is_written_only_in_its_own_step() -> None:
    """The digits of a value occur in no number of the question, of a planted step or of another
    necessary step; so removing its step removes the value from the context."""
    for problem in problems():
        necessary = labelled(problem, NECESSARY)
        for value, own in zip(values(problem), necessary, strict=True):
            others = [problem.problem] + [p for p in paragraphs(problem) if p != own]
            numbers = [n for text in others for n in NUMBER.findall(text)]
            assert not [n for n in numbers if value in n], (value, problem.reasoning)
            assert NUMBER.findall(own)[-1] == value


def test_planted_steps_carry_no_value_of_the_answer() -> None:
    seen = 0
    for problem in problems():
        for step in labelled(problem, PLANTED):
            for value in values(problem):
                assert value not in step, (value, step)
            seen += 1
    assert seen > 200


def test_the_answer_is_not_restated_after_the_last_necessary_step() -> None:
    """Unlike the semantic set, the trace does not end on the answer: some traces end on a
    planted step, and the last number of such a trace is not a value of the answer."""
    ends_planted = 0
    for problem in problems():
        assert problem.step_labels is not None
        if problem.step_labels[-1] == PLANTED:
            ends_planted += 1
            last_numbers = NUMBER.findall(paragraphs(problem)[-1])
            assert not set(last_numbers) & set(values(problem))
    assert ends_planted > 15


def test_planted_kinds_and_themes_vary() -> None:
    planted_text = " ".join(s for p in problems() for s in labelled(p, PLANTED))
    for marker in ["question", "check", "No", "As an aside", "numbers"]:
        assert marker in planted_text
    intros = {p.problem.split(":")[0].split(" ", 1)[1] for p in problems()}
    assert len(intros) == len(THEMES)


def test_planted_steps_are_length_matched() -> None:
    gaps = []
    for problem in problems():
        necessary = [approx_tokens(s) for s in labelled(problem, NECESSARY)]
        for step in labelled(problem, PLANTED):
            gaps.append(min(abs(approx_tokens(step) - n) / n for n in necessary))
    assert sum(gap <= LENGTH_TOLERANCE for gap in gaps) / len(gaps) >= 0.95
    necessary = [approx_tokens(s) for p in problems() for s in labelled(p, NECESSARY)]
    planted = [approx_tokens(s) for p in problems() for s in labelled(p, PLANTED)]
    assert abs(statistics.mean(planted) / statistics.mean(necessary) - 1) < 0.05


def test_length_and_position_do_not_predict_the_label(r1_tokenizer) -> None:
    """The length and position baselines of the benchmark have nothing to find."""
    labels = [p.step_labels for p in problems()]
    lengths = [
        [len(r1_tokenizer.encode(t, add_special_tokens=False)) for t in paragraphs(p)]
        for p in problems()
    ]
    positions = [list(range(len(p.step_labels or []))) for p in problems()]
    assert 0.4 < auroc(lengths, labels) < 0.6
    assert 0.4 < auroc(positions, labels) < 0.6
    relative: dict[str, list[float]] = {NECESSARY: [], PLANTED: []}
    for problem in problems():
        assert problem.step_labels is not None
        for index, label in enumerate(problem.step_labels):
            relative[label].append(index / (len(problem.step_labels) - 1))
    assert abs(statistics.mean(relative[PLANTED]) - statistics.mean(relative[NECESSARY])) < 0.1


def test_segmentation_finds_one_step_per_label(r1_tokenizer) -> None:
    for problem in problems()[:15]:
        assert problem.reasoning is not None
        ids = r1_tokenizer.encode(problem.reasoning, add_special_tokens=False)
        steps = segment_steps(r1_tokenizer, ids, 0, len(ids))
        attach_labels(steps, problem.step_labels)
        assert [s.label for s in steps] == problem.step_labels


def test_answers_grade_as_lists() -> None:
    """math-verify reads the list answer: the answer itself is right, a missing value wrong."""
    for problem in problems()[:3]:
        assert _grade_in_worker(problem.answer, problem.final or "", 5).correct
        shorter = ", ".join(values(problem)[:-1])
        assert not _grade_in_worker(problem.answer, f"\\boxed{{{shorter}}}", 5).correct


def test_dataset_specs_select_the_variant() -> None:
    assert [p.id for p in load_problems("planted:causal", limit=3)] == [
        "causal-000",
        "causal-001",
        "causal-002",
    ]
    assert load_problems("planted:semantic", limit=3) == load_problems("planted", limit=3)
    assert load_problems("planted:causal", limit=2, seed=4) == generate_causal(2, seed=4)
    with pytest.raises(DatasetError, match="planted:causal"):
        load_problems("planted:nonsense")
    assert dataset_name("planted") == dataset_name("planted:semantic") == "planted"
    assert dataset_name("planted:causal") == "planted-causal"
