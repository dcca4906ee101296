"""The work of one run on one loaded model: traces, scores and re-evaluated records of units.

A ``UnitRunner`` holds a ``Session`` and the run's strategies and turns a ``(problem, sample)``
unit into what the run folder stores (a trace, importances, records). It never touches the
folder: the experiment's driver alone writes, whether the runner lives in the same process or
in a Ray actor (``workers``), so resume and the no-duplicate guarantee do not depend on where
the work ran. Every method works on one unit at a time (or, for traces, one chunk whose
batching the driver fixes), so the records of a unit do not depend on which worker made them.

For an engine that batches across units (vLLM), plain decoding happens in the driver: the
runner finishes the traces the engine generated (``finish``) and, in text mode, prepares the
contexts to answer from (``prepare``) and turns the answers into records (``complete``).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from transformers import PreTrainedTokenizerBase

from stepprune.config import RunConfig
from stepprune.decoding import Continuation
from stepprune.engines.vllm import model_folder_for_vllm
from stepprune.grading import Grader
from stepprune.models import load_model, resolve_model_source
from stepprune.modes import MODES, Mode, Outcome, Pruning, TextMode, to_record
from stepprune.policies import POLICIES
from stepprune.runfolder import control_spec, threshold_key
from stepprune.schema import Problem, Record, Trace
from stepprune.scorers import SCORERS
from stepprune.session import Segmenter, Session
from stepprune.traces import teacher_forced_output


def build_mode(config: RunConfig) -> Mode:
    """The re-evaluation mode a config asks for, from the ``MODES`` registry."""
    return MODES.get(config.mode).from_config(config)


def control_mask(seed: int, trace: Trace, threshold: float, kept: int) -> tuple[bool, ...]:
    """The random control: ``kept`` steps chosen at random, seeded by run seed, trace and
    threshold, so it keeps as many steps as the scorer it controls."""
    key = f"{seed}:{trace.problem_id}:{trace.sample}:{threshold_key(threshold)}"
    chosen = np.random.default_rng(zlib.crc32(key.encode())).permutation(len(trace.steps))
    keep = np.zeros(len(trace.steps), dtype=bool)
    keep[chosen[:kept]] = True
    return tuple(keep.tolist())


def control_of(config: RunConfig, mode: Mode, scorer_spec: str) -> str | None:
    """The random control's spec for this run, None without one (``--no-control``, online)."""
    if not config.control or mode.decides_online:
        return None
    return control_spec(config.seed, scorer_spec)


@dataclass
class EngineInputs:
    """A driver-side engine's view of the model: where vLLM reads it, its tokenizer and end
    tokens, the dtype it was loaded in, the cue text that answers continue, and the most
    positions the model takes."""

    model_dir: str
    tokenizer: PreTrainedTokenizerBase
    eos_ids: list[int]
    dtype: str
    box_prefix: str
    context_limit: int | None


@dataclass
class UnitResult:
    """What one unit adds to the run folder: importances newly computed (None when the folder
    had them) and the records of every pruning (the folder skips those it has)."""

    problem_id: str
    sample: int
    importances: list[float] | None
    records: list[Record] = field(default_factory=list)


@dataclass
class Prepared:
    """A text-mode unit ready for answers: its prunings and the contexts to answer from, one
    per distinct keep mask (``masks[i]`` -> ``contexts[i]``)."""

    problem: Problem
    trace: Trace
    importances: list[float]
    new_importances: bool
    prunings: list[Pruning]
    masks: list[tuple[bool, ...]]
    contexts: list[list[int]]


class UnitRunner:
    """A session with the run's mode, scorer, control and thresholds (see module docstring)."""

    def __init__(self, session: Session, config: RunConfig) -> None:
        self.session, self.config = session, config
        self.mode = build_mode(config)
        self.control = control_of(config, self.mode, session.scorer.spec)

    @classmethod
    def load(cls, config: RunConfig, grader: Grader | None) -> UnitRunner:
        """Load the config's model and build the runner (in the driver or a worker)."""
        model, tokenizer = load_model(
            config.model, config.device, config.dtype, config.load_in_4bit
        )
        session = Session(
            model,
            tokenizer,
            scorer=SCORERS.build(config.scorer),
            policy=POLICIES.build(config.policy),
            segmenter=Segmenter(config.segmenter, config.min_step_chars),
            grader=grader,
        )
        return cls(session, config)

    # -- traces -------------------------------------------------------------------------------

    def traces(self, units: Sequence[tuple[Problem, int]]) -> list[Trace]:
        """Traces of a chunk of units, generated by the session's engine in one call."""
        return self.session.traces(units, self.config.sampling(), self.config.seed)

    def prompt_ids(self, problems: Sequence[Problem]) -> list[list[int]]:
        return [self.session.prompt_ids(p) for p in problems]

    def sequence_lengths(self, problems: Sequence[Problem], max_new_tokens: int) -> list[int]:
        """The longest prompt + trace of each problem: its brought ids, its teacher-forced
        reasoning, or its prompt and ``max_new_tokens`` generated."""
        session, lengths = self.session, []
        for problem in problems:
            prompt = session.prompt_ids(problem)
            if problem.output_ids is not None:
                lengths.append(len(prompt) + len(problem.output_ids))
            elif problem.reasoning is not None:
                forced, _ = teacher_forced_output(
                    session.format, problem, prompt, session.eos_ids[0]
                )
                lengths.append(len(prompt) + len(forced))
            else:
                lengths.append(len(prompt) + max_new_tokens)
        return lengths

    def finish(
        self, problem: Problem, sample: int, prompt_ids: list[int], output_ids: list[int]
    ) -> Trace:
        """The trace of ids generated elsewhere (the driver's vLLM engine)."""
        return self.session.finish_trace(problem, sample, prompt_ids, output_ids)

    # -- re-evaluation ----------------------------------------------------------------------

    def prunings(self, trace: Trace, importances: list[float]) -> list[Pruning]:
        """The scorer's mask at every threshold and the random control beside each (online
        mode decides during generation: no masks)."""
        thresholds, scorer = self.config.thresholds, self.session.scorer.spec
        if self.mode.decides_online:
            return [Pruning(scorer, t) for t in thresholds]
        masks = self.session.keep_masks(importances, thresholds)
        prunings = [Pruning(scorer, t, m) for t, m in zip(thresholds, masks, strict=True)]
        if self.control is not None:
            prunings += [
                Pruning(self.control, t, control_mask(self.config.seed, trace, t, sum(m)))
                for t, m in zip(thresholds, masks, strict=True)
            ]
        return prunings

    def _importances(
        self, problem: Problem, trace: Trace, importances: list[float] | None
    ) -> tuple[list[float], bool]:
        if importances is not None:
            return importances, False
        return self.session.score(trace, problem), True  # a trace reused with another scorer

    def evaluate(
        self, problem: Problem, trace: Trace, importances: list[float] | None
    ) -> UnitResult:
        """Score (when ``importances`` is None) and re-evaluate every threshold of one trace.

        All thresholds are evaluated together, so batches of greedy answers, and hence the
        answers, do not depend on which records a resumed run still lacks.
        """
        importances, new = self._importances(problem, trace, importances)
        outcomes = self.mode.evaluate(
            self.session, problem, trace, self.prunings(trace, importances)
        )
        return UnitResult(
            trace.problem_id,
            trace.sample,
            importances if new else None,
            self._records(problem, trace, outcomes),
        )

    def prepare(self, problem: Problem, trace: Trace, importances: list[float] | None) -> Prepared:
        """Text mode, answers decoded elsewhere: the contexts of one trace's prunings."""
        if not isinstance(self.mode, TextMode):
            raise TypeError(f"--mode {self.mode.name} answers in the runner, not from contexts")
        importances, new = self._importances(problem, trace, importances)
        prunings = self.prunings(trace, importances)
        masks, contexts = self.mode.contexts(self.session, trace, prunings)
        return Prepared(problem, trace, importances, new, prunings, masks, contexts)

    def complete(self, prepared: Prepared, answers: Sequence[Continuation]) -> UnitResult:
        """Records of a prepared unit from its answers (``answers[i]`` for ``contexts[i]``)."""
        assert isinstance(self.mode, TextMode)
        outcomes = self.mode.outcomes(
            prepared.trace, prepared.prunings, prepared.masks, prepared.contexts, answers
        )
        problem, trace = prepared.problem, prepared.trace
        importances = prepared.importances if prepared.new_importances else None
        return UnitResult(
            trace.problem_id, trace.sample, importances, self._records(problem, trace, outcomes)
        )

    def _records(self, problem: Problem, trace: Trace, outcomes: list[Outcome]) -> list[Record]:
        records = [to_record(self.session, self.mode, problem, trace, o) for o in outcomes]
        for record in records:
            record.engine = self.config.engine
        return records

    # -- checks and engine inputs -----------------------------------------------------------

    def check(self, problems: Sequence[Problem]) -> str | None:
        """Checks that need the loaded model (layers; every prompt against the context)."""
        check = getattr(self.session.scorer, "check_model", None)
        if check is not None:
            check(self.session.model.config, cached_only=self.mode.decides_online)
        return self.session.check_lengths(problems, self.config.max_new_tokens)

    def engine_inputs(self) -> EngineInputs:
        """What the driver needs to decode for this runner with vLLM (a folder vLLM reads: the
        model's own, or a de-quantised copy of a GGUF made once)."""
        session = self.session
        source, gguf_file = resolve_model_source(self.config.model)
        folder = model_folder_for_vllm(session.model, session.tokenizer, source, gguf_file)
        dtype = str(session.model.dtype).removeprefix("torch.")
        return EngineInputs(
            folder,
            session.tokenizer,
            list(session.eos_ids),
            dtype,
            session.format.answer_cue_text(),
            session.context_limit,
        )

    def describe(self) -> str:
        model = self.session.model
        kind = "thinking" if self.session.format.is_thinking else "non-thinking"
        return f"{kind}, {model.config.num_hidden_layers} layers, {model.device}, {model.dtype}"
