"""The eight word-problem scenarios (apples, shopping, train, library, cookies, garden, savings,
pencils): each builder draws its numbers and returns a ``_Scenario`` with its chain of
calculations; ``TEMPLATES`` names them."""

from __future__ import annotations

import random
from collections.abc import Callable

from stepprune.planted.calcs import _Scenario, _step

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
