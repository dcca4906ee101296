"""Scorers built from other scorers (``mix``, ``step-redundancy``): their nested specs and checks.

A part is given as an option value holding a whole spec, in parentheses when it has options
of its own: ``mix:a=(attention:query=probe,agg=mean),b=entropy,w=0.5`` (see
``registry.nested_spec``). The composite forwards the model checks to its parts, so that
``attention:layers=99`` inside a mix is refused before any work, like on its own.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from stepprune.registry import SpecError, embed_spec, nested_spec
from stepprune.scorers.base import SCORERS, Scorer


def build_part(value: str, owner: str, option: str) -> Scorer:
    """The scorer that option ``option`` of composite ``owner`` names, with a clear error."""
    spec = nested_spec(str(value))
    if not spec:
        raise SpecError(f"{owner}: {option}= is empty; give a scorer spec")
    try:
        return SCORERS.build(spec)
    except SpecError as error:
        raise SpecError(f"{owner}: {option}={value!r}: {error}") from None


def part_spec(scorer: Scorer) -> str:
    """A part's canonical spec as an option value (parenthesised when it holds commas)."""
    return embed_spec(scorer.spec)


class Composite(Scorer):
    """Model checks of a scorer made of ``parts`` (a tuple of scorers)."""

    @property
    def parts(self) -> tuple[Scorer, ...]:
        raise NotImplementedError

    @property
    def needs_model_config(self) -> bool:
        return any(p.needs_model_config for p in self.parts)

    def check_model(self, config: PretrainedConfig, cached_only: bool = False) -> None:
        for part in self.parts:
            part.check_model(config, cached_only=cached_only)

    @property
    def reads_gold(self) -> bool:  # type: ignore[override]
        """Reads the reference answer when any part does."""
        return any(p.reads_gold for p in self.parts)

    @property
    def oracle_on_teacher_forced(self) -> bool:
        """An oracle when any part is one."""
        return any(p.oracle_on_teacher_forced for p in self.parts)
