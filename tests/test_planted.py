"""Tests of stepprune.planted: the generated problems, their traces and step labels."""

from __future__ import annotations

import re
import statistics

import pytest

from stepprune.planted import NECESSARY, PLANTED, generate_planted
from stepprune.schema import Problem
from stepprune.steps import attach_labels, segment_paragraphs

EQUATION = re.compile(r"(\d+) ([×÷+-]) (\d+) = (\d+)")
OPERATIONS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "×": lambda a, b: a * b,
    "÷": lambda a, b: a / b,  # true division: an inexact quotient fails the comparison
}

PROBLEMS = generate_planted(120, seed=0)


def paragraphs(problem: Problem) -> list[str]:
    assert problem.reasoning is not None
    return problem.reasoning.split("\n\n")


def labelled(problem: Problem, label: str) -> list[str]:
    assert problem.step_labels is not None
    pairs = zip(paragraphs(problem), problem.step_labels, strict=True)
    return [text for text, step_label in pairs if step_label == label]


def test_same_seed_same_problems() -> None:
    assert generate_planted(20, seed=5) == generate_planted(20, seed=5)


def test_different_seed_different_problems() -> None:
    first, second = generate_planted(10, seed=0), generate_planted(10, seed=1)
    assert [p.reasoning for p in first] != [p.reasoning for p in second]


def test_smaller_n_is_a_prefix() -> None:
    assert generate_planted(5, seed=3) == generate_planted(12, seed=3)[:5]


def test_ids_and_count() -> None:
    assert [p.id for p in generate_planted(3)] == ["planted-000", "planted-001", "planted-002"]
    assert generate_planted(0) == []
    with pytest.raises(ValueError):
        generate_planted(-1)


@pytest.mark.parametrize("problem", PROBLEMS[:40], ids=lambda p: p.id)
def test_labels_align_with_paragraphs(problem: Problem) -> None:
    parts = paragraphs(problem)
    assert problem.step_labels is not None
    assert len(problem.step_labels) == len(parts)
    assert set(problem.step_labels) <= {NECESSARY, PLANTED}
    assert 2 <= problem.step_labels.count(NECESSARY) <= 4
    assert 2 <= problem.step_labels.count(PLANTED) <= 4
    for part in parts:
        assert len(part) >= 30
        assert "\n\n" not in part
        assert part == part.strip()


def test_paragraph_rules_hold_for_many_seeds() -> None:
    for seed in range(10):
        for problem in generate_planted(30, seed=seed):
            labels = problem.step_labels
            assert labels is not None and NECESSARY in labels and PLANTED in labels
            parts = paragraphs(problem)
            assert len(parts) == len(labels)
            assert all(len(p) >= 30 and p == p.strip() and "\n" not in p for p in parts)


def test_answers_are_positive_integers_in_final() -> None:
    for problem in PROBLEMS:
        assert problem.answer.isdigit() and int(problem.answer) > 0
        assert problem.final == f"The answer is \\boxed{{{problem.answer}}}."


def test_final_necessary_step_states_the_answer() -> None:
    for problem in PROBLEMS:
        last = labelled(problem, NECESSARY)[-1]
        equations = EQUATION.findall(last)
        assert equations, last
        assert equations[-1][3] == problem.answer, last


def test_each_necessary_step_carries_correct_arithmetic() -> None:
    for problem in PROBLEMS:
        for step in labelled(problem, NECESSARY):
            equations = EQUATION.findall(step)
            assert len(equations) == 1, step
            left, op, right, result = equations[0]
            assert OPERATIONS[op](int(left), int(right)) == int(result), step


def test_necessary_steps_chain_to_the_answer() -> None:
    """Every intermediate result of a necessary step is used by a later necessary step."""
    for problem in PROBLEMS:
        steps = [EQUATION.findall(s)[0] for s in labelled(problem, NECESSARY)]
        for index, (_, _, _, result) in enumerate(steps[:-1]):
            later_operands = {operand for s in steps[index + 1 :] for operand in (s[0], s[2])}
            assert result in later_operands, problem.reasoning


def test_arithmetic_in_planted_steps_is_correct_too() -> None:
    """Re-checks and false starts compute correctly; they are redundant, not wrong sums."""
    for problem in PROBLEMS:
        for step in labelled(problem, PLANTED):
            for left, op, right, result in EQUATION.findall(step):
                assert OPERATIONS[op](int(left), int(right)) == int(result), step


def test_planted_steps_take_varied_positions() -> None:
    first_step_planted, last_step_planted, positions = 0, 0, set()
    for problem in PROBLEMS:
        labels = problem.step_labels
        assert labels is not None
        first_step_planted += labels[0] == PLANTED
        last_step_planted += labels[-1] == PLANTED
        positions |= {i for i, label in enumerate(labels) if label == PLANTED}
    assert first_step_planted > 10
    assert last_step_planted > 10
    assert positions >= set(range(7))


def test_several_templates_and_kinds_are_used() -> None:
    questions = {p.problem.split()[2] for p in PROBLEMS}  # a cheap fingerprint of the template
    assert len(questions) >= 5
    planted_text = " ".join(s for p in PROBLEMS for s in labelled(p, PLANTED))
    for marker in ["question", "check", "Maybe I should", "does not", "wrong"]:
        assert marker in planted_text


def test_planted_steps_are_length_matched() -> None:
    necessary = [len(s) for p in PROBLEMS for s in labelled(p, NECESSARY)]
    planted = [len(s) for p in PROBLEMS for s in labelled(p, PLANTED)]
    ratio = statistics.mean(planted) / statistics.mean(necessary)
    assert 0.85 < ratio < 1.2
    assert max(planted) < 2 * max(necessary)
    assert min(planted) > 0.5 * min(necessary)


def test_segmentation_finds_one_step_per_label(r1_tokenizer) -> None:
    """The labels reach the pipeline's steps: segmentation splits exactly at the paragraphs."""
    for problem in PROBLEMS[:15]:
        assert problem.reasoning is not None
        ids = r1_tokenizer.encode(problem.reasoning, add_special_tokens=False)
        steps = segment_paragraphs(r1_tokenizer, ids, 0, len(ids))
        attach_labels(steps, problem.step_labels)
        assert [s.label for s in steps] == problem.step_labels
        # A step may end in the token that carries the blank line after it.
        assert [s.text.strip() for s in steps] == paragraphs(problem)
