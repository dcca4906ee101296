"""The causal variant of the planted set (``--planted causal``, ``--dataset planted:causal``).

In the semantic set (:func:`stepprune.planted.generate_planted`) a step is necessary when the
derivation needs it, but each result is restated by the next step and the last step states the
answer: a model that answers from the trace needs only that last step, so removing an earlier
necessary step changes nothing and the ablation reference cannot tell it from a planted one.

Here the necessary steps are each needed by the answer itself, and the planted ones carry
nothing it needs:

- **The answer combines every necessary step.** A question asks for 2-4 independent quantities
  ("How many apples, pears and plums does Tom pack?"), each one trivial calculation on numbers
  of the question, and the answer is their list (``12, 20, 15``). The model only has to copy
  each result from the step that computes it; no step uses another's result.
- **Each result is written once.** A result has two digits, and its digits appear in no other
  number of the question or of any other step (drawn again until so), so a necessary step is
  the only place the answer's value is found, and the answer is never restated.
- **Planted steps carry no result.** Restatements of the question, irrelevant facts, re-checks
  of an earlier step's *operands* (the givens, not the result) and false starts (a wrong
  operation on the next step's operands, abandoned). Their numbers are givens or wrong results,
  none of which is part of the answer.

Length and position are matched as in the semantic set (``_fit`` to a necessary step's length,
planted positions a uniform random subset of all positions, first and last included); since no
answer is restated, any kind but a false start may also follow the last necessary step.
"""

from __future__ import annotations

import random
import re

from stepprune.planted.calcs import _Calc
from stepprune.planted.causal_scenarios import THEMES, _CausalScenario, build_scenario
from stepprune.planted.planting import (
    FALSE_START,
    IRRELEVANT,
    LEAD_INS,
    NECESSARY,
    NECESSARY_LEAD_IN_RATE,
    NECESSARY_TAIL_RATE,
    PLANTED,
    RECHECK,
    RESTATEMENT,
    TAILS,
    _false_start,
    _fit,
    approx_tokens,
)
from stepprune.planted.scenarios import _PEOPLE
from stepprune.schema import Problem

CAUSAL_ID_PREFIX = "causal"
MIN_PLANTED, MAX_PLANTED = 2, 4
# A draw whose result digits turn up in another number is drawn again; a handful of tries is
# always enough (the test suite checks thousands of problems), this only bounds a bug.
_MAX_TRIES = 1000
_NUMBER = re.compile(r"\d+")


def _restatement(scenario: _CausalScenario) -> list[str]:
    goal, summary = scenario.goal, scenario.summary
    return [
        f"We want {goal}.",
        f"So the question is asking {goal}.",
        f"Let me restate the question: we want {goal}.",
        f"To restate the problem, the givens are {summary}, and we want {goal}.",
        f"Let me make sure I have the question right: the givens are {summary}, and the "
        f"question asks {goal}. That is what I need to find.",
    ]


def _irrelevant(scenario: _CausalScenario) -> list[str]:
    # The same facts after a lead-in give more lengths to choose from.
    asides = [f"As an aside, {fact[0].lower()}{fact[1:]}" for fact in scenario.facts]
    names = {name for name, _, _ in _PEOPLE}
    asides = [  # a fact that starts with a name keeps its capital letter
        f"As an aside, {fact}" if fact.split()[0] in names else aside
        for fact, aside in zip(scenario.facts, asides, strict=True)
    ]
    return list(scenario.facts) + asides


def _operand_recheck(calc: _Calc) -> list[str]:
    """Re-reading the givens of an earlier step: its operands, never its result."""
    left, right, what = calc.left, calc.right, calc.what
    return [
        f"Check: the {what} uses {left} and {right}.",
        f"Let me check the numbers for the {what}: {left} and {right}, as given.",
        f"Checking the question again, the {what} uses {left} and {right}, so that is right.",
        f"Let me double-check that I took {left} and {right} for the {what}. Yes, that "
        "matches the question.",
        f"Before going on, let me reread the question for the {what}. It says {left} and "
        f"{right}, so I used the right numbers there.",
    ]


def _necessary_text(calc: _Calc, rng: random.Random) -> str:
    """The step's sentence, sometimes with a filler before or after it (as in planted steps)."""
    lead = rng.choice(LEAD_INS[1:]) if rng.random() < NECESSARY_LEAD_IN_RATE else ""
    tail = rng.choice(TAILS[1:]) if rng.random() < NECESSARY_TAIL_RATE else ""
    return f"{lead}{calc.text}{tail}"


def _plant_causal(scenario: _CausalScenario, rng: random.Random) -> tuple[list[str], list[str]]:
    """Interleave the necessary steps with 2-4 planted ones; return paragraphs and labels."""
    calcs = scenario.calcs
    necessary = [_necessary_text(calc, rng) for calc in calcs]
    n_planted = rng.randint(MIN_PLANTED, MAX_PLANTED)
    total = len(calcs) + n_planted
    # Positions first, uniformly among all subsets, so position says nothing about the label.
    planted_at = set(rng.sample(range(total), n_planted))
    labels = [PLANTED if i in planted_at else NECESSARY for i in range(total)]
    # Length targets: the necessary steps in a shuffled cycle, one per planted step.
    order = rng.sample(range(len(calcs)), len(calcs))
    targets = [approx_tokens(necessary[order[k % len(order)]]) for k in range(n_planted)]

    paragraphs: list[str] = []
    used_kinds: set[str] = set()
    done = 0  # necessary steps written so far
    for label in labels:
        if label == NECESSARY:
            paragraphs.append(necessary[done])
            done += 1
            continue
        allowed = [RESTATEMENT, IRRELEVANT]
        if done > 0:
            allowed.append(RECHECK)
        if done < len(calcs):
            allowed.append(FALSE_START)
        # Prefer a kind the trace does not have yet, so a trace mixes kinds.
        kind = rng.choice([k for k in allowed if k not in used_kinds] or allowed)
        used_kinds.add(kind)
        if kind == RESTATEMENT:
            phrasings = _restatement(scenario)
        elif kind == IRRELEVANT:
            phrasings = _irrelevant(scenario)
        elif kind == RECHECK:
            phrasings = _operand_recheck(calcs[rng.randrange(done)])
        else:
            phrasings = _false_start(calcs[done])
        paragraphs.append(_fit(phrasings, targets.pop(), rng))
    return paragraphs, labels


def results_written_once(
    scenario: _CausalScenario, paragraphs: list[str], labels: list[str]
) -> bool:
    """Whether each result's digits appear in no number of the question or of any step but
    the necessary step that computes it, and there only as its result (last number)."""
    at = [i for i, label in enumerate(labels) if label == NECESSARY]
    for value, own in zip(scenario.values, at, strict=True):
        digits = str(value)
        elsewhere = [scenario.question] + [p for i, p in enumerate(paragraphs) if i != own]
        if any(digits in number for text in elsewhere for number in _NUMBER.findall(text)):
            return False
        if any(digits in number for number in _NUMBER.findall(paragraphs[own])[:-1]):
            return False
    return True


def causal_problem(index: int, rng: random.Random) -> Problem:
    """One causal problem from ``rng``: a scenario and its planted trace, drawn again until
    every result is written once (:func:`results_written_once`)."""
    names = list(THEMES)
    for _ in range(_MAX_TRIES):
        theme = THEMES[rng.choice(names)]
        scenario = build_scenario(theme, rng, *rng.choice(_PEOPLE))
        paragraphs, labels = _plant_causal(scenario, rng)
        if results_written_once(scenario, paragraphs, labels):
            break
    else:  # pragma: no cover - the draws above always succeed within a few tries
        raise RuntimeError("could not draw a causal planted problem")
    return Problem(
        id=f"{CAUSAL_ID_PREFIX}-{index:03d}",
        problem=scenario.question,
        answer=scenario.answer,
        reasoning="\n\n".join(paragraphs),
        final=f"The answer is \\boxed{{{scenario.answer}}}.",
        step_labels=labels,
    )


def generate_causal(n: int, seed: int = 0) -> list[Problem]:
    """``n`` causal planted problems; like ``generate_planted``, the output depends only on
    ``n`` and ``seed``, and a smaller ``n`` gives a prefix of a larger one.

    ``answer`` is the list of the necessary steps' results in question order (``"12, 20, 15"``),
    ``final`` the answer section ``The answer is \\boxed{12, 20, 15}.``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    return [causal_problem(index, rng) for index in range(n)]
