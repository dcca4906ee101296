"""Where decoding happens, decided once: the run's two stages behind one interface.

    traces(units)   -> Iterator[Trace]        (as they are finished)
    evaluate(items) -> Iterator[UnitResult]   (one per (problem, trace, importances) item)

``WorkerStages``: the engine decodes where the model is loaded (``hf``); the workers trace
chunks of ``TRACE_CHUNK`` units, each generated in one call (the chunks are the same whatever
the number of workers, so the traces are too), and re-evaluate one unit per call, or
``EVALUATE_CHUNK`` units per call for a mode that decodes several traces in one batch (kv).

``DriverStages``: the engine decodes beside the driver (vLLM), in one batch across units. The
workers make the prompts and finish each trace (segment, score, grade) the moment the engine
hands it over; a mode that answers from contexts (text) has the workers prepare
``ANSWER_CHUNK`` units' contexts, the engine answer them in one call, and the workers turn the
answers into records. Other modes re-evaluate on the workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from stepprune.config import RunPlan
from stepprune.engines import Engine
from stepprune.runner import UnitResult, UnitRunner
from stepprune.schema import Problem, Trace
from stepprune.session import sample_seed
from stepprune.workers import LocalPool, RayPool

Pool = LocalPool | RayPool
#: A unit to re-evaluate: its problem, its trace and its importances (None: not scored yet).
Item = tuple[Problem, Trace, list[float] | None]

# Units per engine call while tracing: large enough to batch, small enough to resume often.
TRACE_CHUNK = 8
# Units per re-evaluation call of a mode that batches units (kv): its rows share batches within
# the mode's memory budget; a killed run loses at most this many units' records.
EVALUATE_CHUNK = 8
# Units whose answers one driver-side engine call decodes: its batch, and how much work a
# killed run can lose.
ANSWER_CHUNK = 64


def drain(pool: Pool) -> Iterator[Any]:
    """Results finished so far, without waiting (the driver writes while workers work)."""
    yield from pool.results(wait=False)


class WorkerStages:
    """Every stage on the workers (see the module docstring)."""

    def __init__(self, pool: Pool, plan: RunPlan) -> None:
        self.pool, self.plan = pool, plan

    def traces(self, units: Sequence[tuple[Problem, int]]) -> Iterator[Trace]:
        for begin in range(0, len(units), TRACE_CHUNK):
            self.pool.submit(UnitRunner.traces, list(units[begin : begin + TRACE_CHUNK]))
            for traces in drain(self.pool):
                yield from traces
        for traces in self.pool.results():
            yield from traces

    def evaluate(self, items: Sequence[Item]) -> Iterator[UnitResult]:
        if self.plan.mode.batches_units:
            for begin in range(0, len(items), EVALUATE_CHUNK):
                self.pool.submit(
                    UnitRunner.evaluate_many, list(items[begin : begin + EVALUATE_CHUNK])
                )
                for results in drain(self.pool):
                    yield from results
            for results in self.pool.results():
                yield from results
            return
        for problem, trace, importances in items:
            self.pool.submit(UnitRunner.evaluate, problem, trace, importances)
            yield from drain(self.pool)
        yield from self.pool.results()


class DriverStages(WorkerStages):
    """Decoding by ``engine`` beside the driver (see the module docstring); ``answer_cue``
    is the text that answers continue (they stop at its first complete box)."""

    def __init__(self, pool: Pool, plan: RunPlan, engine: Engine, answer_cue: str) -> None:
        super().__init__(pool, plan)
        self.engine, self.answer_cue = engine, answer_cue

    def traces(self, units: Sequence[tuple[Problem, int]]) -> Iterator[Trace]:
        yield from super().traces([(p, s) for p, s in units if p.brings_trace])
        generated = [(p, s) for p, s in units if not p.brings_trace]
        if not generated:
            return
        prompts = self.pool.call(UnitRunner.prompt_ids, [p for p, _ in generated])
        seeds = [sample_seed(self.plan.seed, p.id, s) for p, s in generated]
        for index, output in self.engine.sample_stream(prompts, seeds, self.plan.sampling):
            problem, sample = generated[index]
            self.pool.submit(UnitRunner.finish, problem, sample, prompts[index], output.ids)
            yield from drain(self.pool)
        yield from self.pool.results()

    def evaluate(self, items: Sequence[Item]) -> Iterator[UnitResult]:
        if not self.plan.mode.answers_from_contexts:
            yield from super().evaluate(items)
            return
        for begin in range(0, len(items), ANSWER_CHUNK):
            chunk = items[begin : begin + ANSWER_CHUNK]
            for problem, trace, importances in chunk:
                self.pool.submit(UnitRunner.prepare, problem, trace, importances)
            prepared = list(self.pool.results())
            contexts = [c for unit in prepared for c in unit.contexts]
            answers = self.engine.greedy(contexts, self.plan.answer_max_tokens, self.answer_cue)
            offset = 0
            for unit in prepared:
                answered = answers[offset : offset + len(unit.contexts)]
                self.pool.submit(UnitRunner.complete, unit, answered)
                offset += len(unit.contexts)
                yield from drain(self.pool)
            yield from self.pool.results()
