"""Re-evaluation modes: one family, one signature, one result type.

    (trace, prunings) -> Mode.evaluate() -> Outcomes -> records

A ``Pruning`` says which steps to drop (a scorer's keep mask at a threshold, or the random
control's). Text and kv modes answer from each given keep mask; online mode decides what to drop
while it generates, from the session's scorer and policy at the pruning's threshold, so its
prunings carry no mask (``Mode.decides_online``). Every mode returns one ``Outcome`` per
pruning, in order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from stepprune.decoding import Continuation
from stepprune.registry import Plugin, Registry
from stepprune.schema import Problem, Record, Step, Trace

if TYPE_CHECKING:
    from stepprune.scorers import Scorer
    from stepprune.session import Session


@dataclass(frozen=True)
class Pruning:
    """Drop what ``keep`` rejects (None: the mode decides online), labelled by scorer spec and
    threshold for the record."""

    scorer: str
    threshold: float
    keep: tuple[bool, ...] | None = None
    #: For the random control: the spec of the scorer it controls.
    control_of: str | None = None


@dataclass
class Outcome:
    """A re-evaluated answer before grading: the steps it came from and which were kept.

    ``details`` holds the mode's own record fields (kv: ``positions``, ``cache_tokens``,
    ``full_cache_tokens``; online: those and ``online``).
    """

    pruning: Pruning
    steps: list[Step]
    keep: list[bool]
    answer: Continuation
    context_tokens: int
    details: dict[str, Any] = field(default_factory=dict)
    # Whether the answer continues the end-of-reasoning cue (text, kv, teacher-forced online);
    # an online-generated trace's answer is the model's own, written without it.
    after_cue: bool = True


class Mode(Plugin, ABC):
    """How the model answers again after pruning.

    Subclasses are dataclasses registered with ``@MODES.register(name)``: their spec options
    are fields (``kv:positions=rerotate``), and the run's own settings (answer budget, seed,
    sampling) are ``run_setting`` fields filled by ``MODES.build(spec, **settings)``.
    """

    #: True when the mode prunes during generation: no keep masks, no random control.
    decides_online: ClassVar[bool] = False
    #: True when the mode's answers are plain greedy continuations of token-id contexts
    #: (``contexts`` / ``outcomes``), which an engine beside the driver can decode in batches.
    answers_from_contexts: ClassVar[bool] = False
    #: True when ``evaluate_units`` decodes several traces together (the stages then hand the
    #: runner chunks of units instead of one at a time).
    batches_units: ClassVar[bool] = False

    def check(self, scorer: Scorer) -> None:
        """Raise ValueError when this mode cannot run with ``scorer`` (before any loading).
        Text and kv modes run with every scorer."""
        return None

    @abstractmethod
    def evaluate(
        self, session: Session, problem: Problem, trace: Trace, prunings: Sequence[Pruning]
    ) -> list[Outcome]:
        """One outcome per pruning, in order."""

    def evaluate_units(
        self, session: Session, units: Sequence[tuple[Problem, Trace, Sequence[Pruning]]]
    ) -> list[list[Outcome]]:
        """``evaluate`` of several units (one list of outcomes per unit, in order); modes
        that ``batches_units`` decode them together."""
        return [self.evaluate(session, problem, trace, p) for problem, trace, p in units]

    def contexts(
        self, session: Session, trace: Trace, prunings: Sequence[Pruning]
    ) -> tuple[list[tuple[bool, ...]], list[list[int]]]:
        """The distinct keep masks and the context of each (``answers_from_contexts``)."""
        raise TypeError(f"mode {self.name} does not answer from contexts")

    def outcomes(
        self,
        trace: Trace,
        prunings: Sequence[Pruning],
        masks: Sequence[tuple[bool, ...]],
        contexts: Sequence[list[int]],
        answers: Sequence[Continuation],
    ) -> list[Outcome]:
        """One outcome per pruning from the answers to ``contexts`` (``answers_from_contexts``)."""
        raise TypeError(f"mode {self.name} does not answer from contexts")


MODES: Registry[Mode] = Registry("mode")


def unique_masks(prunings: Sequence[Pruning]) -> list[tuple[bool, ...]]:
    """The distinct keep masks, in first-seen order: greedy answers depend on the kept set
    only, so prunings that keep the same steps share one answer."""
    return list(dict.fromkeys(p.keep for p in prunings if p.keep is not None))


def to_record(
    session: Session, mode: Mode, problem: Problem, trace: Trace, outcome: Outcome
) -> Record:
    """Grade an outcome and describe it as a record."""
    kept = [s for s, k in zip(outcome.steps, outcome.keep, strict=True) if k]
    text = session.answer_text(outcome.answer.content_ids, after_cue=outcome.after_cue)
    grade = session.grade(problem, text)
    return Record(
        control_of=outcome.pruning.control_of,
        problem_id=trace.problem_id,
        sample=trace.sample,
        threshold=outcome.pruning.threshold,
        mode=mode.name,
        scorer=outcome.pruning.scorer,
        policy=session.policy.spec,
        kept_steps=[s.index for s in kept],
        num_steps=len(outcome.steps),
        num_kept_steps=len(kept),
        reasoning_tokens=sum(s.num_tokens for s in outcome.steps),
        tokens_kept=sum(s.num_tokens for s in kept),
        reasoning_chars=sum(len(s.text) for s in outcome.steps),
        chars_kept=sum(len(s.text) for s in kept),
        context_tokens=outcome.context_tokens,
        answer_text=text,
        answer_tokens=len(outcome.answer.content_ids),
        answer_truncated=outcome.answer.truncated,
        gold=problem.answer,
        prediction=grade.prediction,
        correct=grade.correct,
        trace_truncated=trace.truncated,
        **outcome.details,
    )
