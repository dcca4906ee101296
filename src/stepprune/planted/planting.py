"""Planting redundant steps among the necessary ones: the step labels and planted-step kinds
(restatement, irrelevant fact, re-check, false start, final re-check), length fitting in
approximate tokens (``approx_tokens``, ``_fit``) and ``_plant``, which interleaves a trace."""

from __future__ import annotations

import random
import re

from stepprune.planted.calcs import _apply, _Calc, _Scenario
from stepprune.planted.scenarios import _PEOPLE

NECESSARY = "necessary"
PLANTED = "planted"

# Kinds of planted step; a trace mixes them (distinct kinds while the positions allow).
RESTATEMENT = "restatement"
IRRELEVANT = "irrelevant"
RECHECK = "recheck"
FALSE_START = "false_start"
PLANTED_KINDS = (RESTATEMENT, IRRELEVANT, RECHECK, FALSE_START)


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
