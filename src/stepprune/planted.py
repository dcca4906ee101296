"""A synthetic benchmark with known redundant steps: arithmetic word problems whose reasoning
traces are written by the program, with redundant steps planted among the necessary ones.

Each necessary step computes one intermediate result ("Tom starts with 3 boxes of 12 apples, so
he has 3 × 12 = 36 apples."); the last necessary step states the final answer. Planted steps
carry nothing the answer needs: a restatement of the question, an irrelevant fact, a re-check of
an earlier result, or an abandoned false start. A good step scorer should rank planted steps
below necessary ones, and pruning them should not change the answer.

The set is built so that neither length nor position predicts the label:

- **Length.** Each planted step is paired with a necessary step of its trace (cycling through
  them in a shuffled order, so each necessary length is used about equally often) and written to
  within ±10% of that step's length in approximate tokens (:func:`approx_tokens`, which counts
  words, punctuation and single digits the way the byte-level BPE tokenizers of Qwen, R1-distill
  and SmolLM2 split them). The phrasing is picked among several of each kind, with a neutral lead-in
  ("Let me see.") and tail ("Let me continue.") sentence to fine-tune the length. Necessary steps
  get the same filler sentences at random, so a filler does not mark a step as planted.
- **Position.** The positions of the planted steps are a uniformly random subset of all positions
  (first and last included), drawn before their kinds; the kind is then chosen among those that
  make sense there. The positions of both classes are therefore exchangeable and their mean
  relative positions agree in expectation.

Ordering rules: necessary steps keep their order, so the last necessary step states the final
result. A re-check needs a necessary step before it (it checks one of them); a false start needs
a necessary step after it (it fumbles the operands of the next one, then abandons the idea).
Restatements and irrelevant facts may go anywhere before the final necessary step. Planted steps
after it (the trace's last steps) are re-checks of the final result that end by stating it
again, and no filler follows the final result: the last number of every trace is the answer,
because small models answer with the most recent number they read, and a planted step must not
change the full-context answer. Since some kind fits every position, the kind never constrains
where a planted step goes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from stepprune.schema import Problem

NECESSARY = "necessary"
PLANTED = "planted"

# Kinds of planted step; a trace mixes them (distinct kinds while the positions allow).
RESTATEMENT = "restatement"
IRRELEVANT = "irrelevant"
RECHECK = "recheck"
FALSE_START = "false_start"
PLANTED_KINDS = (RESTATEMENT, IRRELEVANT, RECHECK, FALSE_START)

PARAGRAPH_SEPARATOR = "\n\n"
DEFAULT_SIZE = 30

# (name, subject pronoun, possessive pronoun)
_PEOPLE = (
    ("Tom", "he", "his"),
    ("Mia", "she", "her"),
    ("Ravi", "he", "his"),
    ("Lena", "she", "her"),
    ("Omar", "he", "his"),
    ("Sara", "she", "her"),
    ("Ben", "he", "his"),
    ("Ana", "she", "her"),
)


def _apply(left: int, op: str, right: int) -> int:
    """Exact integer arithmetic; the templates choose numbers so that division has no rest."""
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "×":
        return left * right
    if op == "÷":
        quotient, rest = divmod(left, right)
        if rest:
            raise AssertionError(f"{left} ÷ {right} is not exact")
        return quotient
    raise ValueError(f"unknown operator {op!r}")


@dataclass(frozen=True)
class _Calc:
    """One necessary step: ``left op right = result``, written inside a sentence."""

    left: int
    op: str
    right: int
    result: int
    what: str  # the quantity computed, as a noun phrase ("number of apples in the boxes")
    text: str

    @property
    def equation(self) -> str:
        return f"{self.left} {self.op} {self.right} = {self.result}"

    @property
    def inverse(self) -> str:
        """The check that works backwards: the inverse operation recovers the left operand."""
        return f"{self.result} {_INVERSE[self.op]} {self.right} = {self.left}"


def _step(left: int, op: str, right: int, what: str, before: str, after: str) -> _Calc:
    """A necessary step whose sentence is ``before + "left op right = result" + after``."""
    result = _apply(left, op, right)
    text = f"{before}{left} {op} {right} = {result}{after}"
    return _Calc(left, op, right, result, what, text)


@dataclass(frozen=True)
class _Scenario:
    """A word problem with its chain of calculations and material for planted steps."""

    question: str
    summary: str  # the givens, as a clause ("Tom has 3 boxes of 12 apples and ...")
    goal: str  # what is asked, as a clause ("how many apples Tom has at the end")
    calcs: tuple[_Calc, ...]
    facts: tuple[str, ...]  # true-sounding sentences that do not bear on the answer

    @property
    def answer(self) -> int:
        return self.calcs[-1].result


def _apples(rng: random.Random, name: str, he: str, his: str) -> _Scenario:
    boxes, per_box = rng.randint(2, 6), rng.randint(6, 12)
    given = rng.randint(2, 9)
    bags, per_bag = rng.randint(2, 4), rng.randint(3, 8)
    have = _step(
        boxes,
        "×",
        per_box,
        "number of apples in the boxes",
        f"{name} starts with {boxes} boxes of {per_box} apples, so {he} has ",
        " apples.",
    )
    left = _step(
        have.result,
        "-",
        given,
        "number of apples left after the gift",
        f"After giving {given} apples to the neighbour, {he} has ",
        " apples left.",
    )
    bagged = _step(
        bags,
        "×",
        per_bag,
        "number of apples in the bags",
        f"The {bags} bags hold {per_bag} apples each, which is ",
        " more apples.",
    )
    total = _step(
        left.result,
        "+",
        bagged.result,
        "total number of apples",
        f"Adding the apples from the bags, {name} now has ",
        " apples in total.",
    )
    return _Scenario(
        question=(
            f"{name} has {boxes} boxes with {per_box} apples in each box. {he.capitalize()} gives "
            f"{given} apples to a neighbour and then buys {bags} bags with {per_bag} apples in "
            f"each bag. How many apples does {name} have now?"
        ),
        summary=(
            f"{name} has {boxes} boxes of {per_box} apples, gives away {given} apples and buys "
            f"{bags} bags of {per_bag} apples"
        ),
        goal=f"how many apples {name} has at the end",
        calcs=(have, left, bagged, total),
        facts=(
            "The apples are a mix of red and green ones, and the colour makes no difference.",
            f"The neighbour lives {rng.randint(3, 9)} houses down the street, which has nothing "
            "to do with the number of apples.",
            "Apples keep for weeks in a cool cellar, but how long they keep is not asked here.",
        ),
    )


def _shopping(rng: random.Random, name: str, she: str, her: str) -> _Scenario:
    count, price, pen = rng.randint(2, 5), rng.randint(2, 6), rng.randint(2, 9)
    budget = count * price + pen + rng.randint(3, 20)
    notebooks = _step(
        count,
        "×",
        price,
        "cost of the notebooks",
        f"The {count} notebooks cost ",
        " dollars altogether.",
    )
    spent = _step(
        notebooks.result,
        "+",
        pen,
        "amount spent",
        f"Together with the pen, {name} spends ",
        " dollars.",
    )
    rest = _step(
        budget,
        "-",
        spent.result,
        "money left",
        f"{she.capitalize()} started with {budget} dollars, so {she} has ",
        " dollars left.",
    )
    return _Scenario(
        question=(
            f"{name} has {budget} dollars. {she.capitalize()} buys {count} notebooks that cost "
            f"{price} dollars each and a pen that costs {pen} dollars. How many dollars does "
            f"{name} have left?"
        ),
        summary=(
            f"{name} has {budget} dollars and buys {count} notebooks at {price} dollars each and "
            f"a pen for {pen} dollars"
        ),
        goal=f"how many dollars {name} has left",
        calcs=(notebooks, spent, rest),
        facts=(
            "The shop is closed on Sundays, which does not change what anything costs.",
            f"Each notebook has {rng.randint(4, 9) * 10} pages, but the page count is not part "
            "of the price.",
            f"The pen writes in blue ink, a detail that has no effect on {her} money.",
        ),
    )


def _train(rng: random.Random, name: str, he: str, his: str) -> _Scenario:
    fast, fast_hours = rng.randint(4, 9) * 10, rng.randint(2, 4)
    slow, slow_hours = rng.randint(2, 6) * 10, rng.randint(1, 3)
    first = _step(
        fast,
        "×",
        fast_hours,
        "distance of the first part",
        "In the first part of the trip the train covers ",
        " kilometres.",
    )
    second = _step(
        slow,
        "×",
        slow_hours,
        "distance of the second part",
        "In the second part of the trip it covers ",
        " kilometres.",
    )
    total = _step(
        first.result,
        "+",
        second.result,
        "total distance",
        "So the total distance the train travels is ",
        " kilometres.",
    )
    return _Scenario(
        question=(
            f"A train travels at {fast} kilometres per hour for {fast_hours} hours, then slows "
            f"down to {slow} kilometres per hour for another {slow_hours} hours. How many "
            "kilometres does the train travel in total?"
        ),
        summary=(
            f"the train goes {fast} km/h for {fast_hours} hours and then {slow} km/h for "
            f"{slow_hours} hours"
        ),
        goal="the total distance the train travels in kilometres",
        calcs=(first, second, total),
        facts=(
            f"The train has {rng.randint(5, 12)} carriages, but that does not affect the distance.",
            "Trains like this one usually run on electricity, which does not matter here.",
            f"{name} is on board, and {his} seat number has nothing to do with how far it goes.",
        ),
    )


def _library(rng: random.Random, name: str, she: str, her: str) -> _Scenario:
    shelves, per_shelf = rng.randint(3, 8), rng.randint(5, 12)
    borrowed = rng.randint(2, 9)
    full = _step(
        shelves,
        "×",
        per_shelf,
        "number of books on the full shelves",
        "When they are full, the shelves hold ",
        " books.",
    )
    rest = _step(
        full.result,
        "-",
        borrowed,
        "number of books still on the shelves",
        f"After {borrowed} books are borrowed, there are ",
        " books still on the shelves.",
    )
    return _Scenario(
        question=(
            f"A library has {shelves} shelves with {per_shelf} books on each shelf. On Monday "
            f"{borrowed} books are borrowed. How many books are still on the shelves?"
        ),
        summary=(
            f"there are {shelves} shelves of {per_shelf} books and {borrowed} books are borrowed"
        ),
        goal="how many books are still on the shelves",
        calcs=(full, rest),
        facts=(
            "Some books are novels and some are atlases; the kind of book does not matter.",
            f"The library opened {rng.randint(10, 60)} years ago, which does not change the count.",
            f"The librarian, {name}, says {she} likes oak shelves, which is beside the point.",
        ),
    )


def _cookies(rng: random.Random, name: str, she: str, her: str) -> _Scenario:
    trays, bag_size = rng.randint(2, 5), rng.randint(2, 6)
    per_tray = bag_size * rng.randint(2, 4)  # makes the cookies split evenly into bags
    price = rng.randint(2, 5)
    baked = _step(
        trays,
        "×",
        per_tray,
        "number of cookies",
        f"{name} bakes ",
        " cookies in total.",
    )
    bags = _step(
        baked.result,
        "÷",
        bag_size,
        "number of bags",
        f"Packing them {bag_size} to a bag gives ",
        " bags.",
    )
    earned = _step(
        bags.result,
        "×",
        price,
        "money earned",
        f"Selling each bag for {price} dollars earns {her} ",
        " dollars.",
    )
    return _Scenario(
        question=(
            f"{name} bakes {trays} trays of cookies with {per_tray} cookies on each tray. "
            f"{she.capitalize()} packs the cookies into bags of {bag_size} and sells every bag "
            f"for {price} dollars. How many dollars does {name} earn?"
        ),
        summary=(
            f"{name} bakes {trays} trays of {per_tray} cookies, packs them in bags of {bag_size} "
            f"and sells each bag for {price} dollars"
        ),
        goal=f"how many dollars {name} earns",
        calcs=(baked, bags, earned),
        facts=(
            "The cookies are oatmeal with raisins; the flavour does not affect the price.",
            f"The oven was set to {rng.randint(16, 20) * 10} degrees, which has nothing to do "
            "with the money.",
            "Cookies taste best on the day they are baked, but taste is not part of the question.",
        ),
    )


def _garden(rng: random.Random, name: str, he: str, his: str) -> _Scenario:
    rows, per_row, per_plant = rng.randint(2, 6), rng.randint(3, 8), rng.randint(2, 6)
    plants = _step(
        rows,
        "×",
        per_row,
        "number of tomato plants",
        f"{name} has ",
        " tomato plants in the garden.",
    )
    harvest = _step(
        plants.result,
        "×",
        per_plant,
        "number of tomatoes",
        f"Each plant grows {per_plant} tomatoes, so the harvest is ",
        " tomatoes.",
    )
    return _Scenario(
        question=(
            f"{name} plants {rows} rows of tomato plants with {per_row} plants in each row. "
            f"Each plant grows {per_plant} tomatoes. How many tomatoes does {name} harvest?"
        ),
        summary=(
            f"{name} has {rows} rows of {per_row} tomato plants and each plant grows "
            f"{per_plant} tomatoes"
        ),
        goal=f"how many tomatoes {name} harvests",
        calcs=(plants, harvest),
        facts=(
            "Tomatoes need plenty of sun, but sunshine is not part of this count.",
            f"The garden is {rng.randint(5, 15)} metres long, which does not change the harvest.",
            f"{name} waters {his} plants every evening, a detail that does not matter here.",
        ),
    )


def _savings(rng: random.Random, name: str, she: str, her: str) -> _Scenario:
    weekly, weeks, gift = rng.randint(3, 10), rng.randint(3, 8), rng.randint(5, 20)
    saved = _step(
        weekly,
        "×",
        weeks,
        "amount saved",
        f"Saving {weekly} dollars a week for {weeks} weeks gives ",
        " dollars.",
    )
    with_gift = _step(
        saved.result,
        "+",
        gift,
        "amount after the gift",
        f"With the birthday gift, {name} has ",
        " dollars.",
    )
    game = rng.randint(5, min(30, with_gift.result - 1))
    rest = _step(
        with_gift.result,
        "-",
        game,
        "money left",
        f"After buying the game, {she} has ",
        " dollars left.",
    )
    return _Scenario(
        question=(
            f"{name} saves {weekly} dollars every week for {weeks} weeks and then gets {gift} "
            f"dollars as a birthday gift. {she.capitalize()} spends {game} dollars on a game. "
            f"How many dollars does {name} have now?"
        ),
        summary=(
            f"{name} saves {weekly} dollars a week for {weeks} weeks, gets a {gift} dollar gift "
            f"and spends {game} dollars"
        ),
        goal=f"how many dollars {name} has after buying the game",
        calcs=(saved, with_gift, rest),
        facts=(
            f"The birthday falls in {rng.choice(['March', 'June', 'October'])}, which does not "
            "change the amount.",
            "The game is a puzzle game, and the kind of game has no effect on the money.",
            f"{name} keeps {her} savings in a jar, which does not change how much there is.",
        ),
    )


def _pencils(rng: random.Random, name: str, he: str, his: str) -> _Scenario:
    classes, per_class, each = rng.randint(2, 4), rng.randint(5, 12), rng.randint(2, 3)
    needed = classes * per_class * each
    # The list is never empty: ``classes`` (2 to 4) divides ``needed``.
    pack = rng.choice([d for d in range(2, 13) if needed % d == 0])
    price = rng.randint(2, 4)
    students = _step(
        classes,
        "×",
        per_class,
        "number of students",
        "Altogether the school has ",
        " students.",
    )
    pencils = _step(
        students.result,
        "×",
        each,
        "number of pencils",
        f"Each student needs {each} pencils, so the school needs ",
        " pencils.",
    )
    packs = _step(
        pencils.result,
        "÷",
        pack,
        "number of packs",
        f"With {pack} pencils in a pack, that is ",
        " packs.",
    )
    cost = _step(
        packs.result,
        "×",
        price,
        "cost of the pencils",
        f"At {price} dollars a pack, the school spends ",
        " dollars.",
    )
    return _Scenario(
        question=(
            f"A school has {classes} classes with {per_class} students in each class. Every "
            f"student needs {each} pencils, and pencils come in packs of {pack}. A pack costs "
            f"{price} dollars. How many dollars does the school spend on pencils?"
        ),
        summary=(
            f"there are {classes} classes of {per_class} students, each needing {each} pencils, "
            f"in packs of {pack} at {price} dollars"
        ),
        goal="how many dollars the school spends on pencils",
        calcs=(students, pencils, packs, cost),
        facts=(
            "The pencils are yellow with pink erasers, which has no effect on the cost.",
            f"The school was built {rng.randint(20, 90)} years ago, which does not matter here.",
            f"The head teacher, {name}, orders the pencils, but who orders them is beside the "
            "point.",
        ),
    )


_Template = Callable[[random.Random, str, str, str], _Scenario]
TEMPLATES: dict[str, _Template] = {
    "apples": _apples,
    "shopping": _shopping,
    "train": _train,
    "library": _library,
    "cookies": _cookies,
    "garden": _garden,
    "savings": _savings,
    "pencils": _pencils,
}


# Digits are single tokens for these tokenizers, and a number after a space costs one more token
# for the space itself (" 36" -> " ", "3", "6"); words and punctuation marks cost one token each.
_TOKEN_PIECES = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]")
_SPACED_NUMBER = re.compile(r"(?<=\s)\d")


def approx_tokens(text: str) -> int:
    """Approximate token count of ``text`` for byte-level BPE tokenizers that split digits.

    The generator has no tokenizer, so it matches lengths in this unit; a test checks the real
    R1-distill and SmolLM2 tokenizers against it.
    """
    return len(_TOKEN_PIECES.findall(text)) + len(_SPACED_NUMBER.findall(text))


# Neutral sentences that fit before or after any step, necessary or planted, in a thinking trace.
# Their lengths (0 to 9 approximate tokens) fill the gap between a phrasing and its target.
LEAD_INS = (
    "",
    "Okay. ",
    "Alright. ",
    "Let me see. ",
    "Let me think. ",
    "Okay, let me see. ",
    "Let me think about this. ",
    "Okay, let me think about this part. ",
)
TAILS = (
    "",
    " Moving on.",
    " Let me continue.",
    " Let me keep going.",
    " Let me keep that in mind.",
    " I will keep going from here.",
    " Let me keep that in mind and go on.",
    " With that noted, let me continue with the rest.",
)
# How often a necessary step gets a filler sentence, so fillers are not a planted-only cue.
NECESSARY_LEAD_IN_RATE = 0.25
NECESSARY_TAIL_RATE = 0.2
LENGTH_TOLERANCE = 0.10
# Every paragraph is a step of its own: segmentation merges paragraphs under 10 non-space
# characters into the next one, and this keeps well clear of that.
MIN_PARAGRAPH_CHARS = 30


def _fit(
    phrasings: list[str], target: int, rng: random.Random, tails: tuple[str, ...] = TAILS
) -> str:
    """A phrasing, with a lead-in and tail where needed, of about ``target`` approximate tokens.

    Among the combinations within ``LENGTH_TOLERANCE`` of the target, those with the fewest
    filler sentences win (so fillers stay about as common as in necessary steps), then those
    closest to the target; remaining ties are broken at random for variety. When nothing is
    within the tolerance, the closest combination is taken.
    """
    candidates = []
    for phrasing in phrasings:
        for lead in LEAD_INS:
            for tail in tails:
                text = f"{lead}{phrasing}{tail}"
                if len(text) < MIN_PARAGRAPH_CHARS:
                    continue
                gap = abs(approx_tokens(text) - target)
                candidates.append(((bool(lead) + bool(tail), gap), text))
    within = [c for c in candidates if c[0][1] <= LENGTH_TOLERANCE * target]
    if not within:
        within = [((0, gap), text) for (_, gap), text in candidates]
    best = min(key for key, _ in within)
    return rng.choice([text for key, text in within if key == best])


def _restatement(scenario: _Scenario) -> list[str]:
    goal, summary = scenario.goal, scenario.summary
    return [
        f"We want {goal}.",
        f"So the question is asking {goal}.",
        f"Let me restate the question: we want {goal}.",
        f"To restate the problem, {summary}, and we want {goal}.",
        f"Let me make sure I have the question right: {summary}, and the question asks "
        f"{goal}. That is what I need to find.",
    ]


_NAMES = {name for name, _, _ in _PEOPLE}


def _irrelevant(scenario: _Scenario) -> list[str]:
    # The same facts with a lead-in give more lengths to choose from.
    def after_lead_in(fact: str) -> str:
        first_word = fact.split()[0].strip(",")
        return fact if first_word in _NAMES else f"{fact[0].lower()}{fact[1:]}"

    return list(scenario.facts) + [f"As an aside, {after_lead_in(f)}" for f in scenario.facts]


# A re-check works backwards: the inverse operation recovers the left operand.
_INVERSE = {"×": "÷", "÷": "×", "+": "-", "-": "+"}


def _recheck(calc: _Calc) -> list[str]:
    inverse = calc.inverse
    return [
        f"Check: {inverse}.",
        f"Checking {calc.result}: {inverse}, so it is right.",
        f"Let me check {calc.result} again: {inverse}, so it is right.",
        f"Let me double-check the {calc.what}: {inverse}, so {calc.result} is correct.",
        f"Before going on, let me double-check the {calc.what}. Working backwards, "
        f"{inverse}, which matches, so {calc.result} is correct.",
    ]


# A false start applies the wrong operation to the operands of the step that comes next.
_WRONG_OPERATION = {
    "×": ("+", "add"),
    "÷": ("×", "multiply"),
    "+": ("×", "multiply"),
    "-": ("+", "add"),
}


def _false_start(calc: _Calc) -> list[str]:
    op, verb = _WRONG_OPERATION[calc.op]
    wrong = f"{calc.left} {op} {calc.right} = {_apply(calc.left, op, calc.right)}"
    return [
        f"{verb.capitalize()}? {wrong}. No.",
        f"{verb.capitalize()} them? {wrong}. No.",
        f"Or {verb}? {wrong}. No, that is wrong.",
        f"What if I {verb} them? {wrong}. No, that is wrong.",
        f"Maybe I should {verb} {calc.left} and {calc.right}: {wrong}. No, that is wrong.",
        f"Maybe I should {verb} {calc.left} and {calc.right}: {wrong}. No, that is not what "
        "the problem describes.",
        f"Hmm, maybe I should {verb} {calc.left} and {calc.right} here, which gives {wrong}. "
        f"No wait, that does not give the {calc.what}, so I will drop that idea.",
    ]


def _final_recheck(calc: _Calc) -> list[str]:
    """Re-checks of the final result that end by stating it again (see ``_plant``)."""
    inverse = calc.inverse
    return [
        f"So indeed, {calc.equation} again.",
        f"Check: {inverse}, so {calc.result} is right.",
        f"Checking the {calc.what}: {inverse}, so it is {calc.result}.",
        f"Let me double-check the {calc.what}: {inverse}, so it is {calc.result}.",
        f"Before finishing, let me double-check the {calc.what}. Working backwards, "
        f"{inverse}, which matches, so the {calc.what} is {calc.result}.",
    ]


def _necessary_text(calc: _Calc, rng: random.Random, final: bool) -> str:
    """The step's sentence, sometimes with a filler before it, or after it unless it is the
    final step (the final result stays the last thing it says)."""
    lead = rng.choice(LEAD_INS[1:]) if rng.random() < NECESSARY_LEAD_IN_RATE else ""
    tail = rng.choice(TAILS[1:]) if rng.random() < NECESSARY_TAIL_RATE else ""
    if final:
        tail = ""
    return f"{lead}{calc.text}{tail}"


def _plant(scenario: _Scenario, rng: random.Random) -> tuple[list[str], list[str]]:
    """Interleave the necessary steps with 2-4 planted ones; return paragraphs and labels.

    A planted step after the final necessary step is a re-check of the final result that ends
    by stating it again, with no filler after it. Small models answer with the most recent
    number they read: a question restatement or a check ending in another number after the
    final result would change the full-context answer, so the planted steps would not be
    redundant there.
    """
    calcs = scenario.calcs
    last = len(calcs) - 1
    necessary = [_necessary_text(calc, rng, final=i == last) for i, calc in enumerate(calcs)]
    n_planted = rng.randint(2, 4)
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
        if done == len(calcs):
            used_kinds.add(RECHECK)
            paragraphs.append(_fit(_final_recheck(calcs[-1]), targets.pop(), rng, tails=("",)))
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
            phrasings = _recheck(calcs[rng.randrange(done)])
        else:
            phrasings = _false_start(calcs[done])
        paragraphs.append(_fit(phrasings, targets.pop(), rng))
    return paragraphs, labels


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
