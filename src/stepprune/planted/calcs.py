"""The arithmetic of a planted problem: exact operations, the necessary-step type ``_Calc`` and
the word-problem type ``_Scenario`` that the scenario builders return."""

from __future__ import annotations

from dataclasses import dataclass


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


# A re-check works backwards: the inverse operation recovers the left operand.
_INVERSE = {"×": "÷", "÷": "×", "+": "-", "-": "+"}


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
