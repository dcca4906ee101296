"""The variants of the planted set, by name: ``semantic`` (the original, the default) and
``causal`` (each necessary step is needed by the answer itself; see :mod:`.causal`) and
``matched`` (as causal, but every planted step is a distractor computation of the same form as
the necessary ones; see :mod:`.matched`)."""

from __future__ import annotations

from collections.abc import Callable

from stepprune.planted.causal import generate_causal
from stepprune.planted.generate import generate_planted
from stepprune.planted.matched import generate_matched
from stepprune.schema import Problem

SEMANTIC = "semantic"
CAUSAL = "causal"
MATCHED = "matched"
DEFAULT_VARIANT = SEMANTIC
PLANTED_VARIANTS: dict[str, Callable[[int, int], list[Problem]]] = {
    SEMANTIC: generate_planted,
    CAUSAL: generate_causal,
    MATCHED: generate_matched,
}


def generate_variant(variant: str, n: int, seed: int = 0) -> list[Problem]:
    """``n`` problems of the planted set ``variant`` (a key of ``PLANTED_VARIANTS``)."""
    try:
        generate = PLANTED_VARIANTS[variant]
    except KeyError:
        raise ValueError(
            f"unknown planted variant {variant!r}: expected {' or '.join(PLANTED_VARIANTS)}"
        ) from None
    return generate(n, seed)
