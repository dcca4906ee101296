"""Plain dataclasses that flow between the pipeline stages and serialise to JSON.

    Problem -> Trace (with Steps) -> Record -> Summary (stepprune.aggregate)

Token positions are always indices into ``prompt_ids + output_ids`` of a trace, end exclusive.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self

# JSON types of the annotations used below ("int | None" allows null). bool is an int in
# Python, so a number field given true/false is refused explicitly.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


def _check_type(cls: type, name: str, annotation: str, value: Any) -> None:
    """Raise TypeError when a JSON value does not have its field's type."""
    kinds = [part.strip() for part in annotation.split("|")]
    if value is None and "None" in kinds:
        return
    allowed = tuple(t for k in kinds for t in _JSON_TYPES.get(k.split("[")[0], ()))
    if not allowed:  # a type this check does not know: leave it to the dataclass
        return
    if isinstance(value, bool) and bool not in allowed:
        allowed = ()
    if not isinstance(value, allowed):
        raise TypeError(f"{name} = {value!r} is not {annotation}")


class JsonMixin:
    """``to_json``/``from_json`` for flat dataclasses (nested ones override ``from_json``).

    ``from_json`` ignores unknown keys and checks the JSON type of every known one, so a row
    written by hand (or by another tool) with a wrong type is refused where it is read, not
    deep inside a computation.
    """

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> Self:
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        values = {k: v for k, v in data.items() if k in known}
        for name, value in values.items():
            _check_type(cls, name, str(known[name].type), value)
        return cls(**values)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls._from_fields(data)


@dataclass
class Problem(JsonMixin):
    """One benchmark item.

    A problem that carries ``reasoning`` is teacher-forced: generation is skipped and the trace
    is ``reasoning`` (then the model's end-of-thinking marker) followed by ``final``, the answer
    section. ``step_labels`` (planted problems only) gives, per paragraph of ``reasoning``,
    ``"necessary"`` or ``"planted"``.

    A problem that carries ``prompt_ids`` and ``output_ids`` brings its whole trace as token
    ids (from a vLLM server or another harness): it is segmented, scored and pruned as is.
    """

    id: str
    problem: str
    answer: str
    reasoning: str | None = None
    final: str | None = None
    step_labels: list[str] | None = None
    prompt_ids: list[int] | None = None
    output_ids: list[int] | None = None

    @property
    def brings_trace(self) -> bool:
        """Whether the trace is given (reasoning text or ids) rather than generated."""
        return self.reasoning is not None or self.output_ids is not None


@dataclass
class Step(JsonMixin):
    """A reasoning step: the token span ``[start, end)`` of ``prompt_ids + output_ids``."""

    index: int
    start: int
    end: int
    text: str
    importance: float | None = None
    label: str | None = None

    @property
    def num_tokens(self) -> int:
        return self.end - self.start


@dataclass
class Trace(JsonMixin):
    """One sample of one problem: exact token ids, where the reasoning is, and its steps.

    ``reasoning_start``/``reasoning_end`` delimit the reasoning in ``prompt_ids + output_ids``
    (end exclusive; for thinking models ``reasoning_end`` is the position of ``</think>``).
    Everything from ``reasoning_end`` on is the answer section and is never a step.
    ``truncated``: generation stopped on the token budget (no ``</think>`` for thinking models,
    or no end-of-sequence token).
    """

    problem_id: str
    sample: int
    prompt_ids: list[int]
    output_ids: list[int]
    reasoning_start: int
    reasoning_end: int
    finished_reasoning: bool
    hit_eos: bool
    teacher_forced: bool
    truncated: bool
    steps: list[Step] = field(default_factory=list)
    scorer: str = ""
    original_answer: str = ""
    original_prediction: str | None = None
    original_correct: bool | None = None
    # The problem statement, so that a run folder is readable without its dataset.
    problem: str = ""
    # The reference answer ``original_correct`` was graded against (None: written before 0.3):
    # a dataset whose answer changed since is refused on resume.
    gold: str | None = None
    # For a teacher-forced problem, ``forced_digest`` of the reasoning and final section it
    # was forced with: an edited one is refused on resume.
    forced: str | None = None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trace:
        data = dict(data)
        if not isinstance(data.get("steps", []), list):
            raise TypeError(f"steps = {data['steps']!r} is not a list")
        steps = [Step.from_json(s) for s in data.pop("steps", [])]
        trace = cls._from_fields(data)
        trace.steps = steps
        return trace


def forced_digest(problem: Problem) -> str | None:
    """A short hash of a teacher-forced problem's ``reasoning`` and ``final`` (None if it is
    not teacher-forced)."""
    if problem.reasoning is None:
        return None
    text = json.dumps([problem.reasoning, problem.final], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass
class Record(JsonMixin):
    """The re-evaluated answer of one trace at one pruning threshold."""

    problem_id: str
    sample: int
    threshold: float
    mode: str
    scorer: str
    policy: str
    kept_steps: list[int]  # indices of the kept steps
    num_steps: int
    num_kept_steps: int
    reasoning_tokens: int
    tokens_kept: int
    reasoning_chars: int
    chars_kept: int
    context_tokens: int
    answer_text: str
    answer_tokens: int
    answer_truncated: bool
    gold: str
    prediction: str | None
    correct: bool
    trace_truncated: bool = False
    # kv and online modes: position scheme and cache entries (before the answer cue) when the
    # answer began, against the unpruned prompt + reasoning.
    positions: str | None = None
    cache_tokens: int | None = None
    full_cache_tokens: int | None = None
    # online mode: tokens generated, peak/final cache, checkpoints, and every eviction with
    # the text that was evicted.
    online: dict[str, Any] | None = None
    # The run's --engine (hf, vllm): it generated the traces that were not brought, and decoded
    # text-mode answers (kv and online answers are decoded by transformers); None in folders
    # made before engines were recorded (all hf).
    engine: str | None = None
    # A random-control record: the spec of the scorer it controls (``scorer`` is the control's
    # own spec, ``random-control:seed=S,of=SCORER``, which keys the unit). None for every other
    # record. Folders written before the field existed are adapted by the run-folder reader.
    control_of: str | None = None

    @property
    def is_control(self) -> bool:
        """Whether this is a record of the random-pruning control (of ``control_of``)."""
        return self.control_of is not None

    @property
    def steps_kept_pct(self) -> float:
        return 100.0 * self.num_kept_steps / self.num_steps if self.num_steps else 100.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        # Only controls carry the field: records.jsonl of a scorer stays as it was written
        # before controls were typed.
        if self.control_of is None:
            del data["control_of"]
        data["steps_kept_pct"] = self.steps_kept_pct
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        if "steps_kept" in data and "num_kept_steps" not in data:  # folders before 0.2
            data = {**data, "num_kept_steps": data["steps_kept"]}
        return cls._from_fields(data)
