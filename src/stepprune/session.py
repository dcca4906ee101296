"""The session: everything the stages need, and the one trace pipeline.

    Problem -> (generate | teacher-force) -> Trace -> segment -> score -> grade original answer

A ``Session`` holds the loaded model, its chat format and end tokens, an engine, the
segmenter, the scorer, the pruning policy and the grader. ``stepprune run``, ``bench scorers``
and online mode all make traces through ``Session.traces`` / ``Session.finish_trace``, so a
trace means the same thing everywhere.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from stepprune.decoding import SamplingConfig
from stepprune.engines import Engine, HFEngine
from stepprune.grading import Grade, Grader
from stepprune.models import ChatFormat, eos_token_ids, load_model
from stepprune.policies import POLICIES, PruningPolicy
from stepprune.schema import Problem, Step, Trace
from stepprune.scorers import SCORERS, Scorer
from stepprune.steps import Segmenter, attach_labels
from stepprune.traces import build_trace, teacher_forced_output


def sample_seed(seed: int, problem_id: str, sample: int) -> int:
    """Seed of one trace: independent of batch, order, number of samples and resume point."""
    return zlib.crc32(f"{seed}:{problem_id}:{sample}".encode())


class Session:
    """A loaded model with the strategies of one experiment.

    Args:
        model, tokenizer: The causal LM and its tokenizer.
        scorer, policy: Strategies (or spec strings, built from the registries).
        segmenter: Step boundaries.
        grader: An open ``Grader`` (the caller owns its worker process); None to skip grading.
        engine: The engine for plain decoding (default: transformers ``generate`` on ``model``).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        scorer: Scorer | str = "attention",
        policy: PruningPolicy | str = "percentile",
        segmenter: Segmenter | None = None,
        grader: Grader | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.format = ChatFormat.from_tokenizer(tokenizer)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.scorer = SCORERS.build(scorer) if isinstance(scorer, str) else scorer
        self.policy = POLICIES.build(policy) if isinstance(policy, str) else policy
        self.segmenter = segmenter or Segmenter()
        self.grader = grader
        self._grades: dict[tuple[str, str], Grade] = {}  # outcomes that share an answer
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        )
        self.engine = engine or HFEngine(model, tokenizer, self.eos_ids, self.pad_id)

    @classmethod
    def load(
        cls,
        model: str = "bundled",
        device: str = "auto",
        dtype: str = "auto",
        load_in_4bit: bool = False,
        **strategies,
    ) -> Session:
        """Load ``model`` (hub id, folder, ``.gguf`` or ``bundled``) and build a session."""
        loaded, tokenizer = load_model(model, device, dtype, load_in_4bit)
        return cls(loaded, tokenizer, **strategies)

    # -- the trace pipeline ------------------------------------------------------------------

    def prompt_ids(self, problem: Problem) -> list[int]:
        """The problem's own ``prompt_ids`` (a trace made elsewhere), else the chat template's."""
        if problem.prompt_ids is not None:
            return list(problem.prompt_ids)
        return self.format.prompt_ids(problem.problem)

    @property
    def context_limit(self) -> int | None:
        """The most positions the model takes (``max_position_embeddings``), if it says."""
        limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return int(limit) if limit else None

    def check_lengths(self, problems: Sequence[Problem], max_new_tokens: int) -> str | None:
        """Refuse a problem whose trace cannot fit the model's context, before any generation.

        A prompt that leaves no room for one generated token, or a teacher-forced prompt +
        reasoning + answer longer than the context, raises ValueError naming the problem (such
        a problem would fail only later, with an allocation error or garbage). A prompt that
        fits but leaves less than ``max_new_tokens`` is allowed: most traces end long before
        their budget, and cutting the budget would change the experiment; the returned warning
        says so (None when everything fits).
        """
        limit = self.context_limit
        if limit is None:
            return None
        short: list[tuple[str, int]] = []
        for problem in problems:
            prompt = self.prompt_ids(problem)
            if problem.output_ids is not None:
                self.check_brought_ids(problem)
            length = self.sequence_length(problem, max_new_tokens)
            if problem.brings_trace and length > limit:
                what = "prompt_ids and output_ids" if problem.output_ids else "prompt and reasoning"
                raise ValueError(
                    f"problem {problem.id!r}: its {what} take {length} tokens, more than the "
                    f"model's context of {limit} tokens"
                )
            if not problem.brings_trace and len(prompt) >= limit:
                raise ValueError(
                    f"problem {problem.id!r}: its prompt takes {len(prompt)} tokens, which "
                    f"leaves no room in the model's context of {limit} tokens"
                )
            if not problem.brings_trace and length > limit:
                short.append((problem.id, len(prompt)))
        if not short:
            return None
        longest = max(n for _, n in short)
        return (
            f"{len(short)} prompt(s) (up to {longest} tokens) + --max-new-tokens "
            f"{max_new_tokens} exceed the model's context of {limit} tokens: a trace that runs "
            "past it is generated beyond the positions the model was trained on"
        )

    def sequence_length(self, problem: Problem, max_new_tokens: int) -> int:
        """The longest prompt + trace of ``problem``: its brought ids, its teacher-forced
        reasoning, or its prompt and ``max_new_tokens`` generated."""
        prompt = self.prompt_ids(problem)
        if problem.output_ids is not None:
            return len(prompt) + len(problem.output_ids)
        if problem.reasoning is not None:
            forced, _ = teacher_forced_output(self.format, problem, prompt, self.eos_ids[0])
            return len(prompt) + len(forced)
        return len(prompt) + max_new_tokens

    def check_brought_ids(self, problem: Problem) -> None:
        """Refuse a trace made elsewhere whose ids cannot be this model's: an id outside its
        vocabulary, or a prompt that does not end with this chat template's generation prompt
        (another template or tokenizer made it; scores would be of a different text)."""
        vocabulary = max(len(self.tokenizer), self.model.config.get_text_config().vocab_size)
        for name in ("prompt_ids", "output_ids"):
            ids = getattr(problem, name) or []
            outside = next((i for i, t in enumerate(ids) if t >= vocabulary), None)
            if outside is not None:
                raise ValueError(
                    f"problem {problem.id!r}: {name}[{outside}] = {ids[outside]} is outside the "
                    f"model's vocabulary of {vocabulary} tokens (made with another tokenizer?)"
                )
        header = self.format.generation_prompt()
        text = self.tokenizer.decode(problem.prompt_ids or [])
        if header.strip() and not text.rstrip().endswith(header.rstrip()):
            raise ValueError(
                f"problem {problem.id!r}: prompt_ids do not end with this model's chat template "
                f"generation prompt {header!r} (they end with {text[-40:]!r}): was the trace made "
                "with another model's template?"
            )

    def traces(
        self,
        units: Sequence[tuple[Problem, int]],
        sampling: SamplingConfig,
        seed: int = 0,
    ) -> list[Trace]:
        """Traces of ``(problem, sample)`` units: generated in one engine call (batched across
        problems and samples, each seeded by ``sample_seed``), teacher-forced for problems
        that carry their reasoning, or taken as is from problems that carry their ids; then
        segmented, scored and graded.

        The run checks the problems first (``check_lengths``), once.
        """
        generated = [(p, s) for p, s in units if not p.brings_trace]
        outputs = self.engine.sample(
            [self.prompt_ids(p) for p, _ in generated],
            [sample_seed(seed, p.id, s) for p, s in generated],
            sampling,
        )
        by_unit = {(p.id, s): out.ids for (p, s), out in zip(generated, outputs, strict=True)}
        traces = []
        for problem, sample in units:
            prompt = self.prompt_ids(problem)
            if problem.output_ids is not None:  # made elsewhere: as is
                trace = self.finish_trace(problem, sample, prompt, list(problem.output_ids))
            elif problem.reasoning is None:
                trace = self.finish_trace(problem, sample, prompt, by_unit[(problem.id, sample)])
            else:
                forced, length = teacher_forced_output(
                    self.format, problem, prompt, self.eos_ids[0]
                )
                trace = self.finish_trace(problem, sample, prompt, forced, length)
            traces.append(trace)
        return traces

    def finish_trace(
        self,
        problem: Problem,
        sample: int,
        prompt_ids: list[int],
        output_ids: list[int],
        reasoning_length: int | None = None,
        score: bool = True,
    ) -> Trace:
        """Locate reasoning and answer in ``output_ids``, segment, score and grade.

        ``reasoning_length`` marks a teacher-forced trace (where its reasoning ends).
        """
        trace = build_trace(
            self.format,
            problem,
            sample,
            prompt_ids,
            output_ids,
            self.eos_ids,
            teacher_forced=reasoning_length is not None,
            reasoning_length=reasoning_length,
        )
        trace.steps = self.segment(trace)
        attach_labels(trace.steps, problem.step_labels)
        if score:
            for step, importance in zip(trace.steps, self.score(trace, problem), strict=True):
                step.importance = importance
            trace.scorer = self.scorer.spec
        if self.grader is not None:
            grade = self.grader.grade(problem.answer, trace.original_answer)
            trace.original_prediction, trace.original_correct = grade.prediction, grade.correct
        return trace

    def segment(self, trace: Trace) -> list[Step]:
        return self.segmenter(
            self.tokenizer, trace.all_ids, trace.reasoning_start, trace.reasoning_end
        )

    def score(self, trace: Trace, problem: Problem, scorer: Scorer | None = None) -> list[float]:
        """Importances of the trace's steps under ``scorer`` (default: the session's)."""
        return (scorer or self.scorer).score(self.model, trace, self.format, problem.answer)

    def keep_masks(
        self, importances: Sequence[float], thresholds: Sequence[float]
    ) -> list[tuple[bool, ...]]:
        """The policy's keep mask at each threshold."""
        return [tuple(self.policy.keep(importances, t)) for t in thresholds]

    def answer_text(self, answer_ids: Sequence[int], after_cue: bool = True) -> str:
        """An answer as graded: the cue text it continues (``after_cue``), then its ids."""
        text = self.tokenizer.decode(list(answer_ids), skip_special_tokens=True)
        return self.format.answer_cue_text() + text if after_cue else text

    def grade(self, problem: Problem, text: str) -> Grade:
        if self.grader is None:
            raise RuntimeError("this session has no grader")
        key = (problem.answer, text)
        if key not in self._grades:
            self._grades[key] = self.grader.grade(problem.answer, text)
        return self._grades[key]
