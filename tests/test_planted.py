"""Tests of stepprune.planted: the generated problems, their traces and step labels."""

from __future__ import annotations

import functools
import re
import statistics

import pytest

from stepprune.bench.auroc import auroc
from stepprune.planted import (
    LEAD_INS,
    LENGTH_TOLERANCE,
    NECESSARY,
    PLANTED,
    TAILS,
    approx_tokens,
    generate_planted,
)
from stepprune.schema import Problem
from stepprune.steps import attach_labels, segment_steps

EQUATION = re.compile(r"(\d+) ([×÷+-]) (\d+) = (\d+)")
OPERATIONS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "×": lambda a, b: a * b,
    "÷": lambda a, b: a / b,  # true division: an inexact quotient fails the comparison
}


@functools.cache
def problems() -> list[Problem]:
    """The 120 problems the tests read, made once per test process on first use, not at
    collection (every xdist worker collects every module)."""
    return generate_planted(120, seed=0)


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


@pytest.mark.parametrize("index", range(40))
def test_labels_align_with_paragraphs(index: int) -> None:
    problem = problems()[index]
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


@pytest.mark.slow
def test_paragraph_rules_hold_for_many_seeds() -> None:
    for seed in range(10):
        for problem in generate_planted(30, seed=seed):
            labels = problem.step_labels
            assert labels is not None and NECESSARY in labels and PLANTED in labels
            parts = paragraphs(problem)
            assert len(parts) == len(labels)
            assert all(len(p) >= 30 and p == p.strip() and "\n" not in p for p in parts)


def test_answers_are_positive_integers_in_final() -> None:
    for problem in problems():
        assert problem.answer.isdigit() and int(problem.answer) > 0
        assert problem.final == f"The answer is \\boxed{{{problem.answer}}}."


def test_final_necessary_step_states_the_answer() -> None:
    for problem in problems():
        last = labelled(problem, NECESSARY)[-1]
        equations = EQUATION.findall(last)
        assert equations, last
        assert equations[-1][3] == problem.answer, last


def test_each_necessary_step_carries_correct_arithmetic() -> None:
    for problem in problems():
        for step in labelled(problem, NECESSARY):
            equations = EQUATION.findall(step)
            assert len(equations) == 1, step
            left, op, right, result = equations[0]
            assert OPERATIONS[op](int(left), int(right)) == int(result), step


def test_necessary_steps_chain_to_the_answer() -> None:
    """Every intermediate result of a necessary step is used by a later necessary step."""
    for problem in problems():
        steps = [EQUATION.findall(s)[0] for s in labelled(problem, NECESSARY)]
        for index, (_, _, _, result) in enumerate(steps[:-1]):
            later_operands = {operand for s in steps[index + 1 :] for operand in (s[0], s[2])}
            assert result in later_operands, problem.reasoning


def test_arithmetic_in_planted_steps_is_correct_too() -> None:
    """Re-checks and false starts compute correctly; they are redundant, not wrong sums."""
    for problem in problems():
        for step in labelled(problem, PLANTED):
            for left, op, right, result in EQUATION.findall(step):
                assert OPERATIONS[op](int(left), int(right)) == int(result), step


def test_planted_steps_take_varied_positions() -> None:
    first_step_planted, last_step_planted, positions = 0, 0, set()
    for problem in problems():
        labels = problem.step_labels
        assert labels is not None
        first_step_planted += labels[0] == PLANTED
        last_step_planted += labels[-1] == PLANTED
        positions |= {i for i, label in enumerate(labels) if label == PLANTED}
    assert first_step_planted > 10
    assert last_step_planted > 10
    assert positions >= set(range(7))


def test_several_templates_and_kinds_are_used() -> None:
    questions = {p.problem.split()[2] for p in problems()}  # a cheap fingerprint of the template
    assert len(questions) >= 5
    planted_text = " ".join(s for p in problems() for s in labelled(p, PLANTED))
    for marker in ["question", "check", "Maybe I should", "does not", "wrong"]:
        assert marker in planted_text


def test_planted_steps_are_length_matched_to_a_necessary_step() -> None:
    """Each planted step is written to the length of a necessary step of its trace (±10% in
    approximate tokens); a few short targets cannot be met that closely (30-character minimum,
    numbers costing several tokens) and get the closest phrasing."""
    gaps = []
    for problem in problems():
        necessary = [approx_tokens(s) for s in labelled(problem, NECESSARY)]
        for step in labelled(problem, PLANTED):
            gaps.append(min(abs(approx_tokens(step) - n) / n for n in necessary))
    within = sum(gap <= LENGTH_TOLERANCE for gap in gaps) / len(gaps)
    assert within >= 0.98, within
    assert max(gaps) <= 0.2


def test_necessary_lengths_are_each_used_as_targets() -> None:
    """Targets cycle through the necessary steps: the planted lengths spread like theirs."""
    necessary = [approx_tokens(s) for p in problems() for s in labelled(p, NECESSARY)]
    planted = [approx_tokens(s) for p in problems() for s in labelled(p, PLANTED)]
    assert abs(statistics.mean(planted) / statistics.mean(necessary) - 1) < 0.05
    assert abs(statistics.stdev(planted) / statistics.stdev(necessary) - 1) < 0.2


def _tokenizer_lengths(tokenizer, problems: list[Problem]) -> dict[str, list[int]]:
    lengths: dict[str, list[int]] = {NECESSARY: [], PLANTED: []}
    for problem in problems:
        assert problem.step_labels is not None
        for text, label in zip(paragraphs(problem), problem.step_labels, strict=True):
            lengths[label].append(len(tokenizer.encode(text, add_special_tokens=False)))
    return lengths


def _check_token_lengths(tokenizer) -> None:
    problems = generate_planted(60, seed=0)
    lengths = _tokenizer_lengths(tokenizer, problems)
    necessary, planted = statistics.mean(lengths[NECESSARY]), statistics.mean(lengths[PLANTED])
    assert abs(planted - necessary) / necessary < 0.15, (necessary, planted)
    # The generator's unit tracks the real tokenizer closely on every step.
    for problem in problems:
        for text in paragraphs(problem):
            real = len(tokenizer.encode(text, add_special_tokens=False))
            assert abs(real - approx_tokens(text)) <= 3, text


def test_token_lengths_match_with_the_r1_tokenizer(r1_tokenizer) -> None:
    _check_token_lengths(r1_tokenizer)


def test_within_trace_length_and_position_do_not_predict_the_label(r1_tokenizer) -> None:
    """AUROC (necessary vs planted, per-trace ranks) of token length and of position is near
    chance: the benchmark's length and position baselines have nothing to find."""
    problems = generate_planted(60, seed=0)
    labels = [p.step_labels for p in problems]
    lengths = [
        [len(r1_tokenizer.encode(t, add_special_tokens=False)) for t in paragraphs(p)]
        for p in problems
    ]
    positions = [list(range(len(p.step_labels or []))) for p in problems]
    assert 0.4 < auroc(lengths, labels) < 0.6
    assert 0.4 < auroc(positions, labels) < 0.6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_and_necessary_positions_balance(seed: int) -> None:
    """Planted positions are a uniform subset of all positions, so the mean relative position
    (0 = first step, 1 = last) is about the same for both classes."""
    positions: dict[str, list[float]] = {NECESSARY: [], PLANTED: []}
    for problem in generate_planted(60, seed=seed):
        labels = problem.step_labels
        assert labels is not None
        for index, label in enumerate(labels):
            positions[label].append(index / (len(labels) - 1))
    gap = statistics.mean(positions[PLANTED]) - statistics.mean(positions[NECESSARY])
    assert abs(gap) < 0.15, gap


def test_names_keep_their_capital_letter() -> None:
    names = {"tom", "mia", "ravi", "lena", "omar", "sara", "ben", "ana"}
    for problem in problems():
        assert problem.reasoning is not None
        assert not names & set(re.findall(r"\b[a-z]+\b", problem.reasoning)), problem.reasoning


def test_the_last_number_of_every_trace_is_the_answer() -> None:
    """Planted steps after the final necessary step re-check the final result and end with it,
    so the full context never ends on another number."""
    for problem in problems():
        assert problem.reasoning is not None
        assert re.findall(r"\d+", problem.reasoning)[-1] == problem.answer, problem.reasoning


def test_fillers_are_not_a_planted_only_cue() -> None:
    """Necessary steps carry the same filler sentences at about the same rate."""

    def has_filler(text: str) -> bool:
        return text.startswith(LEAD_INS[1:]) or text.endswith(TAILS[1:])

    rates = {
        label: statistics.mean(has_filler(s) for p in problems() for s in labelled(p, label))
        for label in (NECESSARY, PLANTED)
    }
    assert 0.2 < rates[NECESSARY] < 0.8
    assert abs(rates[NECESSARY] - rates[PLANTED]) < 0.15, rates


def test_rechecks_follow_and_false_starts_precede_a_necessary_step() -> None:
    """A re-check checks an earlier result; a false start fumbles the operands of the next
    necessary step. Both are recognised by their equation: a false start's is abandoned ("No")."""
    seen = {"recheck": 0, "false start": 0}
    for problem in problems():
        assert problem.step_labels is not None
        parts = paragraphs(problem)
        for index, (text, label) in enumerate(zip(parts, problem.step_labels, strict=True)):
            equations = EQUATION.findall(text)
            if label != PLANTED or not equations:
                continue
            left, _, right, _ = equations[0]
            before = [
                EQUATION.findall(t)[0]
                for t, lab in zip(parts[:index], problem.step_labels, strict=False)
                if lab == NECESSARY
            ]
            after = [
                EQUATION.findall(t)[0]
                for t, lab in zip(parts[index + 1 :], problem.step_labels[index + 1 :], strict=True)
                if lab == NECESSARY
            ]
            if re.search(r"\bNo\b", text):
                seen["false start"] += 1
                assert after and (after[0][0], after[0][2]) == (left, right), text
            else:
                # Working backwards from an earlier result, or repeating its equation.
                seen["recheck"] += 1
                assert left in {result for *_, result in before} or equations[0] in before, text
    assert min(seen.values()) > 20, seen


def test_segmentation_finds_one_step_per_label(r1_tokenizer) -> None:
    """The labels reach the pipeline's steps: segmentation splits exactly at the paragraphs."""
    for problem in problems()[:15]:
        assert problem.reasoning is not None
        ids = r1_tokenizer.encode(problem.reasoning, add_special_tokens=False)
        steps = segment_steps(r1_tokenizer, ids, 0, len(ids))
        attach_labels(steps, problem.step_labels)
        assert [s.label for s in steps] == problem.step_labels
        # A step may end in the token that carries the blank line after it.
        assert [s.text.strip() for s in steps] == paragraphs(problem)
