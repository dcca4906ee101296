"""The form-matched variant of the planted set (``--planted matched``, ``planted:matched``).

In the causal set (:mod:`stepprune.planted.causal`) every necessary step is the template
``a op b = r`` while most planted steps are words, so the form of a step gives its label away:
counting the numbers in a step ranks necessary above planted with an AUROC of about 0.95. Here
the planted steps have the very form of the necessary ones:

- **The question describes more items than it asks for.** A theme's scenario gives the
  operands of 4-6 items ("class A has 11 girls and 16 boys, class B ..."), and asks for 2-3 of
  them ("How many students are in class A and class C?"). The answer is the list of the asked
  items' results in question order (``27, 34``), as in the causal set.
- **Each item gets a step of the same template**, in the order the question lists them:
  ``With the girls and boys, class B has 11 + 16 = 27 students.`` A step is necessary when its
  item is asked for, planted (a *distractor computation*) when it is not. Both get the same
  lead-in and tail fillers at the same rates, so the two classes have the same form (numbers,
  ``=`` signs, operators), the same length distribution and exchangeable positions: which
  items are asked is a uniformly random subset of the items described.
- **Each result is written once.** Every result (asked or not) has two digits, and its digits
  appear in no other number of the question or of any step; so a necessary step is the only
  place an answer value is found, and removing a distractor step removes nothing the answer
  needs.

Only the role of a step tells the classes apart: whether its item is one the question asks for.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

from stepprune.planted.calcs import _Calc
from stepprune.planted.causal import results_written_once
from stepprune.planted.causal_scenarios import (
    ANSWER_SEPARATOR,
    THEMES,
    _and,
    _capital,
    draw_calcs,
)
from stepprune.planted.generate import PARAGRAPH_SEPARATOR
from stepprune.planted.planting import (
    LEAD_INS,
    NECESSARY,
    NECESSARY_LEAD_IN_RATE,
    NECESSARY_TAIL_RATE,
    PLANTED,
    TAILS,
)
from stepprune.planted.scenarios import _PEOPLE
from stepprune.schema import Problem

MATCHED_ID_PREFIX = "matched"
MIN_ASKED, MAX_ASKED = 2, 3
MIN_DISTRACTORS, MAX_DISTRACTORS = 2, 3
_MAX_TRIES = 1000

# More items per theme than the causal set uses (its tuples stay as they are, so that set is
# unchanged): every theme then has room for 3 asked items and 3 distractors.
EXTRA_ITEMS: dict[str, tuple[str, ...]] = {
    "fruit": ("cherries", "figs"),
    "shopping": ("markers", "crayons"),
    "cycling": ("Friday", "Saturday", "Sunday"),
    "library": ("archive room", "music room"),
    "garden": ("peas", "turnips"),
    "bakery": ("pies", "tarts"),
    "classes": ("class E", "class F"),
    "stickers": ("Kai", "Eva"),
}


def _items(theme_name: str) -> tuple[str, ...]:
    return THEMES[theme_name].items + EXTRA_ITEMS[theme_name]


def _step_text(calc: _Calc, rng: random.Random) -> str:
    """The step's sentence with the fillers the necessary steps of every set get; drawn the
    same way for asked and distractor items, so fillers are no cue."""
    lead = rng.choice(LEAD_INS[1:]) if rng.random() < NECESSARY_LEAD_IN_RATE else ""
    tail = rng.choice(TAILS[1:]) if rng.random() < NECESSARY_TAIL_RATE else ""
    return f"{lead}{calc.text}{tail}"


def _draw(index: int, rng: random.Random) -> tuple[Problem, list[_Calc], list[str]]:
    """One draw of a matched problem, its calculations and paragraphs (not yet checked)."""
    theme_name = rng.choice(list(THEMES))
    theme = THEMES[theme_name]
    name, he, his = rng.choice(_PEOPLE)
    person = {"name": name, "he": he, "his": his, "He": _capital(he)}
    all_items = _items(theme_name)
    n_asked = rng.randint(MIN_ASKED, MAX_ASKED)
    n_distractors = rng.randint(MIN_DISTRACTORS, MAX_DISTRACTORS)
    chosen = sorted(rng.sample(range(len(all_items)), n_asked + n_distractors))
    # Which described items are asked: a uniformly random subset, so the positions of the two
    # classes of steps are exchangeable.
    asked = set(rng.sample(range(len(chosen)), n_asked))
    items = [all_items[i] for i in chosen]
    calcs, clauses = draw_calcs(theme, items, person, rng)
    asked_items = [item for k, item in enumerate(items) if k in asked]
    fields = {**person, "items": _and(asked_items), "count": n_asked, "clauses": _and(clauses)}
    order = "the numbers" if n_asked > 2 else "both numbers"
    question = (
        f"{theme.intro.format(**fields)} {theme.ask.format(**fields)} Give {order} in this "
        "order, separated by commas."
    )
    paragraphs = [_step_text(calc, rng) for calc in calcs]
    labels = [NECESSARY if k in asked else PLANTED for k in range(len(calcs))]
    answer = ANSWER_SEPARATOR.join(str(calcs[k].result) for k in sorted(asked))
    problem = Problem(
        id=f"{MATCHED_ID_PREFIX}-{index:03d}",
        problem=question,
        answer=answer,
        reasoning=PARAGRAPH_SEPARATOR.join(paragraphs),
        final=f"The answer is \\boxed{{{answer}}}.",
        step_labels=labels,
    )
    return problem, calcs, paragraphs


def _written_once(question: str, calcs: list[_Calc], paragraphs: list[str]) -> bool:
    """Every result (asked or not) is written only in its own step, as its last number."""
    view = SimpleNamespace(question=question, values=tuple(calc.result for calc in calcs))
    return results_written_once(view, paragraphs, [NECESSARY] * len(paragraphs))  # type: ignore[arg-type]


def matched_problem(index: int, rng: random.Random) -> Problem:
    """One matched problem from ``rng``, drawn again until every result is written once."""
    for _ in range(_MAX_TRIES):
        problem, calcs, paragraphs = _draw(index, rng)
        if _written_once(problem.problem, calcs, paragraphs):
            return problem
    raise RuntimeError("could not draw a matched planted problem")  # pragma: no cover


def generate_matched(n: int, seed: int = 0) -> list[Problem]:
    """``n`` form-matched planted problems; the output depends only on ``n`` and ``seed``, and
    a smaller ``n`` gives a prefix of a larger one.

    ``answer`` is the list of the asked items' results in question order (``"27, 34"``),
    ``final`` the answer section ``The answer is \\boxed{27, 34}.``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    return [matched_problem(index, rng) for index in range(n)]
