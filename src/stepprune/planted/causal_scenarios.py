"""Word problems of the causal planted set: each asks for several independent quantities at
once, and each quantity is one trivial calculation on numbers given in the question.

A scenario is a ``_Theme`` (data: the items it can ask about, how their operands are drawn, how
the question and the steps are worded) instantiated by :func:`build_scenario` with a person, 2-4
of its items and their numbers. The answer is the list of the items' results in the order the
question asks for them, so every necessary step carries a number the answer needs, and no step
chains into another (the semantic set's chains restate each result in the next step).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from stepprune.planted.calcs import _Calc, _step

# Answers are lists of numbers: ``12, 20, 15``. math-verify reads that as a set, so the order
# is asked for but not graded.
ANSWER_SEPARATOR = ", "
MIN_ITEMS, MAX_ITEMS = 2, 4
# Results have two digits: never a single digit that a model could guess or find inside another
# number by chance, and short enough that a list of four is a few tokens to copy.
MIN_RESULT, MAX_RESULT = 10, 99

_Operands = Callable[[random.Random], tuple[int, int]]


@dataclass(frozen=True)
class _Theme:
    """One kind of word problem. Text fields are ``str.format`` templates.

    Fields may use ``{name}``, ``{he}``, ``{his}`` (the person), ``{He}``; per item also
    ``{item}``, ``{Item}``, ``{left}``, ``{right}``; question-level fields also ``{items}``
    (the items asked for, as "a, b and c") and ``{count}``.
    """

    items: tuple[str, ...]
    op: str
    operands: _Operands
    intro: str  # "{name} packs fruit for the market: {clauses}."
    clause: str  # one item's givens: "{left} boxes of {right} {item}"
    ask: str  # "How many {items} does {name} pack?"
    goal: str  # what is asked, as a clause: "how many {items} {name} packs"
    before: str  # the necessary step's text before its equation
    after: str  # ... and after it
    what: str  # the quantity an item's step computes: "number of {item}"
    facts: tuple[str, ...]  # true-sounding sentences that do not bear on the answer


@dataclass(frozen=True)
class _CausalScenario:
    """A word problem that asks for the results of all its calculations, in order."""

    question: str
    summary: str  # the givens, as a clause ("Tom packs 3 boxes of 12 apples and ...")
    goal: str  # what is asked, as a clause
    calcs: tuple[_Calc, ...]
    facts: tuple[str, ...]

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(calc.result for calc in self.calcs)

    @property
    def answer(self) -> str:
        return ANSWER_SEPARATOR.join(str(v) for v in self.values)


def _and(parts: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def build_scenario(
    theme: _Theme, rng: random.Random, name: str, he: str, his: str
) -> _CausalScenario:
    """A scenario of ``theme``: 2-4 of its items (in the theme's order) with drawn operands.

    Operands are redrawn until every result has two digits and the results differ, so that each
    value of the answer is written in exactly one step (the planting checks the rest).
    """
    count = rng.randint(MIN_ITEMS, min(MAX_ITEMS, len(theme.items)))
    chosen = sorted(rng.sample(range(len(theme.items)), count))
    items = [theme.items[i] for i in chosen]
    person = {"name": name, "he": he, "his": his, "He": _capital(he)}
    calcs, clauses = draw_calcs(theme, items, person, rng)
    fields = {**person, "items": _and(items), "count": count, "clauses": _and(clauses)}
    order = "the numbers" if count > 2 else "both numbers"
    question = (
        f"{theme.intro.format(**fields)} {theme.ask.format(**fields)} Give {order} in this "
        "order, separated by commas."
    )
    return _CausalScenario(
        question=question,
        summary=_and(clauses),
        goal=theme.goal.format(**fields),
        calcs=tuple(calcs),
        facts=tuple(f.format(**fields, number=rng.randint(3, 9)) for f in theme.facts),
    )


def _draw(left: tuple[int, int], right: tuple[int, int]) -> _Operands:
    return lambda rng: (rng.randint(*left), rng.randint(*right))


THEMES: dict[str, _Theme] = {
    "fruit": _Theme(
        items=("apples", "pears", "plums", "peaches", "lemons"),
        op="×",
        operands=_draw((2, 9), (3, 12)),
        intro="{name} packs fruit for the market: {clauses}.",
        clause="{left} boxes of {right} {item}",
        ask="How many {items} does {name} pack?",
        goal="how many {items} {name} packs",
        before="For the {item}, {left} boxes of {right} make ",
        after=" {item}.",
        what="number of {item}",
        facts=(
            "The market opens at {number} in the morning, which does not change the count.",
            "{name} stacks the boxes by the door, a detail that does not matter here.",
            "Fruit keeps longer in a cool room, but how long it keeps is not asked.",
        ),
    ),
    "shopping": _Theme(
        items=("notebooks", "pens", "folders", "rulers", "erasers"),
        op="×",
        operands=_draw((2, 6), (2, 9)),
        intro="{name} buys school supplies: {clauses}.",
        clause="{left} {item} at {right} dollars each",
        ask="How many dollars does {name} spend on the {items}?",
        goal="how many dollars {name} spends on the {items}",
        before="The {left} {item} cost ",
        after=" dollars.",
        what="cost of the {item}",
        facts=(
            "The shop is closed on Sundays, which does not change what anything costs.",
            "{name} pays at the counter, and how {he} pays has no effect on the prices.",
            "The shop is {number} streets away, which is beside the point.",
        ),
    ),
    "cycling": _Theme(
        items=("Monday", "Tuesday", "Wednesday", "Thursday"),
        op="×",
        operands=_draw((2, 4), (6, 15)),
        intro="{name} goes cycling: {clauses}.",
        clause="on {item} {he} rides {left} hours at {right} kilometres per hour",
        ask="How many kilometres does {name} ride on {items}?",
        goal="how many kilometres {name} rides on {items}",
        before="On {item}, {he} rides ",
        after=" kilometres.",
        what="distance on {item}",
        facts=(
            "The bike is blue, and its colour has nothing to do with the distance.",
            "{name} carries a bottle of water, which does not change how far {he} rides.",
            "The weather was mild all week, which is not part of the question.",
        ),
    ),
    "library": _Theme(
        items=("reading room", "children's room", "study room", "main hall"),
        op="+",
        operands=_draw((10, 40), (3, 20)),
        intro="{name} counts the books of a library: {clauses}.",
        clause="the {item} has {left} novels and {right} atlases",
        ask="How many books are in the {items}?",
        goal="how many books there are in the {items}",
        before="Novels and atlases together, the {item} holds ",
        after=" books.",
        what="number of books in the {item}",
        facts=(
            "The library opened {number} decades ago, which does not change the count.",
            "Some books have red covers, which does not matter here.",
            "{name} likes the oak shelves, which is beside the point.",
        ),
    ),
    "garden": _Theme(
        items=("carrots", "beans", "onions", "leeks", "radishes"),
        op="×",
        operands=_draw((2, 8), (3, 12)),
        intro="{name} plants a vegetable garden: {clauses}.",
        clause="{left} rows of {right} {item}",
        ask="How many {items} does {name} plant?",
        goal="how many {items} {name} plants",
        before="The {left} rows of {item} come to ",
        after=" plants.",
        what="number of {item}",
        facts=(
            "Vegetables need plenty of sun, but sunshine is not part of this count.",
            "{name} waters the garden every evening, a detail that does not matter here.",
            "The garden gate is painted green, which does not change the count.",
        ),
    ),
    "bakery": _Theme(
        items=("rolls", "buns", "muffins", "bagels", "scones"),
        op="×",
        operands=_draw((2, 6), (4, 12)),
        intro="{name} bakes for a fair: {clauses}.",
        clause="{left} trays of {right} {item}",
        ask="How many {items} does {name} bake?",
        goal="how many {items} {name} bakes",
        before="With {left} trays of {right}, {name} bakes ",
        after=" {item}.",
        what="number of {item}",
        facts=(
            "The oven is electric, which has nothing to do with the count.",
            "The fair starts at {number} in the afternoon, which does not matter here.",
            "Fresh bread smells wonderful, but the smell is not part of the question.",
        ),
    ),
    "classes": _Theme(
        items=("class A", "class B", "class C", "class D"),
        op="+",
        operands=_draw((8, 19), (8, 19)),
        intro="{name} makes a list of the classes at a school: {clauses}.",
        clause="{item} has {left} girls and {right} boys",
        ask="How many students are in {items}?",
        goal="how many students there are in {items}",
        before="With the girls and boys, {item} has ",
        after=" students.",
        what="number of students in {item}",
        facts=(
            "The school has a big playground, which does not change the count.",
            "Lessons start at {number} in the morning, which is not asked here.",
            "{name} writes the list in pencil, a detail that does not matter.",
        ),
    ),
    "stickers": _Theme(
        items=("Ava", "Leo", "Zoe", "Max", "Ivy"),
        op="-",
        operands=_draw((25, 60), (3, 14)),
        intro="{name} asks friends about their stickers: {clauses}.",
        clause="{item} had {left} stickers and gave away {right}",
        ask="How many stickers do {items} keep?",
        goal="how many stickers {items} keep",
        before="{item} gives away {right} and keeps ",
        after=" stickers.",
        what="number of stickers {item} keeps",
        facts=(
            "Most of the stickers show animals, which does not change the count.",
            "The friends meet after school, a detail that does not matter here.",
            "{name} keeps {his} own stickers in a box, which is beside the point.",
        ),
    ),
}


def draw_calcs(
    theme: _Theme, items: list[str], person: dict[str, str], rng: random.Random
) -> tuple[list[_Calc], list[str]]:
    """One calculation and one question clause per item; operands are redrawn until every
    result has two digits and the results differ (shared by the causal and matched sets)."""
    calcs, clauses = [], []
    results: set[int] = set()
    for item in items:
        while True:
            left, right = theme.operands(rng)
            result = _step(left, theme.op, right, "", "", "").result
            if MIN_RESULT <= result <= MAX_RESULT and result not in results:
                break
        results.add(result)
        fields = {**person, "item": item, "Item": _capital(item), "left": left, "right": right}
        calcs.append(
            _step(
                left,
                theme.op,
                right,
                theme.what.format(**fields),
                theme.before.format(**fields),
                theme.after.format(**fields),
            )
        )
        clauses.append(theme.clause.format(**fields))
    return calcs, clauses
