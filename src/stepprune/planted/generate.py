"""The generator of the planted benchmark: ``generate_planted`` draws a scenario per problem,
plants redundant steps in its trace and packs the result as ``Problem`` records."""

from __future__ import annotations

import random

from stepprune.planted.planting import _plant
from stepprune.planted.scenarios import _PEOPLE, TEMPLATES
from stepprune.schema import Problem

PARAGRAPH_SEPARATOR = "\n\n"
DEFAULT_SIZE = 30


def generate_planted(n: int = DEFAULT_SIZE, seed: int = 0) -> list[Problem]:
    """``n`` word problems with program-written traces and redundant steps planted in them.

    Each problem's ``reasoning`` is its paragraphs joined by a blank line, ``step_labels`` says
    per paragraph whether it is ``"necessary"`` or ``"planted"``, ``final`` is the answer section
    (``The answer is \\boxed{N}.``) and ``answer`` the positive integer ``N``. The output depends
    only on ``n`` and ``seed``; a problem depends on the seed and its position, so a smaller
    ``n`` gives a prefix of a larger one.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    names = list(TEMPLATES)
    problems = []
    for index in range(n):
        template = TEMPLATES[rng.choice(names)]
        scenario = template(rng, *rng.choice(_PEOPLE))
        paragraphs, labels = _plant(scenario, rng)
        answer = str(scenario.answer)
        problems.append(
            Problem(
                id=f"planted-{index:03d}",
                problem=scenario.question,
                answer=answer,
                reasoning=PARAGRAPH_SEPARATOR.join(paragraphs),
                final=f"The answer is \\boxed{{{answer}}}.",
                step_labels=labels,
            )
        )
    return problems
