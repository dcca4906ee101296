"""The attention scorer: how much attention query tokens pay to each reasoning step.

Spec options (``attention:query=probe,layers=first-half,heads=receiver,agg=mean,sink=exclude``):

- ``query``: ``last`` (the last token of prompt + output: the original notebook's choice; on
  a finished trace that is the token *after the answer*, the end of sequence, so on a
  teacher-forced trace it reads the reference answer: an oracle view), ``reasoning_end`` (the
  ``</think>`` token of a thinking model, or the last reasoning token of a plain model or a
  trace cut before ``</think>``: what TRAAC and Think Clearly read, and answer-free),
  ``answer`` (every token from the end-of-reasoning cue to the end of an answer: which answer,
  ``answer`` says), or ``probe`` (Think
  Clearly's "Time is up ..." instruction and the end-of-thinking cue, appended after the
  reasoning for this forward pass only, so the probe never enters any later context).
- ``answer`` (``query=answer`` only): ``own`` (default: the model's own answer, answer-free;
  the answer section of a generated trace, the greedy answer decoded after the reasoning on a
  teacher-forced one, see :mod:`stepprune.scorers.own_answer`) or ``reference`` (the reference
  answer teacher-forced after the reasoning and cue, as ``ablation`` scores it: an oracle).
- ``answer_tokens`` (``query=answer`` only): ``all`` (default: every query above) or
  ``values``: only the answer positions whose next token holds a digit, where the model writes
  the answer's values (the "copy queries": a value is copied from the step that computed it);
  all of the answer when it has no digit. On a generated trace of a thinking model the answer
  section may restate the solution, so ``values`` then covers every number it writes.
- ``probe_tokens`` (``query=probe`` only): ``last`` (default, as Think Clearly: the
  end-of-thinking token closing the probe, ``</think>`` for thinking models, else the probe's
  final token) or ``all`` (the mean over every probe token: the behaviour before this option).
- ``layers``: ``all``, ``first-half``, ``last-half``, or explicit indices ``0+3+7``.
- ``heads``: ``mean``, ``max``, or ``receiver``: the ``receivers`` heads (default 8) whose
  attention over the steps is most concentrated (lowest entropy), chosen per trace; with
  ``calibration=FILE`` (``heads=receiver`` and ``layers=all`` only), exactly the (layer, head)
  pairs that file lists, the same for every trace (made by ``receiver.calibrate_receiver_heads``
  or ``stepprune calibrate``; ``receivers`` then is the file's count). The path must not hold
  ``,`` or parentheses (the spec's separators).
- ``agg``: ``sum`` over a step's tokens (tracks step length), or ``mean``.
- ``sink``: ``keep``, or ``exclude``: renormalise each head's row without the first
  ``sink_tokens`` positions (attention sinks) and the separator tokens between steps.

Rows are reduced to per-step sums while they are computed (``AttentionCapture.key_buckets``):
extra memory is O(layers x heads x queries x steps), never tokens squared.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from transformers import PretrainedConfig, PreTrainedModel

from stepprune.capture import capture_attention
from stepprune.context import text_context
from stepprune.kvcache import FULL, KVState
from stepprune.models import ChatFormat
from stepprune.registry import NonNegativeInt, PositiveInt, SpecError
from stepprune.schema import Step, Trace
from stepprune.scorers.ablation import answer_target_ids
from stepprune.scorers.base import SCORERS, Scorer, normalise
from stepprune.scorers.own_answer import AnswerSource, decode_own_answer
from stepprune.scorers.receiver import load_receiver_heads

DEFAULT_PROBE = (
    "Time is up. Given the time I've spent and the approaches I've tried, I should stop "
    "thinking and now write a summary of my reasoning."
)


def key_buckets(trace: Trace, total_len: int, sink_tokens: int) -> tuple[torch.Tensor, int]:
    """Bucket id of every key position: step index ``0..S-1``, ``S`` for the first
    ``sink_tokens`` positions, ``S+1`` for separators inside the reasoning, ``S+2`` for the rest
    (prompt, answer, probe). Returns ``(buckets (total_len,), S + 3)``."""
    n_steps = len(trace.steps)
    buckets = torch.full((total_len,), n_steps + 2, dtype=torch.long)
    buckets[trace.reasoning_start : min(trace.reasoning_end, total_len)] = n_steps + 1
    for step in trace.steps:
        buckets[step.start : step.end] = step.index
    buckets[: min(sink_tokens, total_len)] = n_steps
    return buckets, n_steps + 3


@torch.inference_mode()
def step_attention_mass(
    model: PreTrainedModel,
    ids: list[int],
    query_positions: list[int],
    buckets: torch.Tensor,
    num_buckets: int,
) -> torch.Tensor:
    """Attention mass of each query on each key bucket, per layer and head.

    One forward pass over ``ids`` (no cache kept; logits for the last position only).

    Returns:
        float32 ``(layers, heads, len(query_positions), num_buckets)`` on the CPU.
    """
    input_ids = torch.tensor([ids], device=model.device)
    with capture_attention(
        model, query_positions, key_buckets=buckets.to(model.device), num_buckets=num_buckets
    ) as capture:
        model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
    return capture.stacked().cpu()


@torch.inference_mode()
def cached_probe_mass(
    model: PreTrainedModel, state: KVState, probe: list[int], steps: list[Step]
) -> torch.Tensor:
    """Attention of the ``probe`` tokens, forwarded after ``state``'s cache, on each step's
    cached entries; the probe is then removed from the cache again.

    Returns:
        float64 ``(full-attention layers, heads, len(probe), len(steps) + 1)`` on the CPU; the
        last bucket holds everything that is not a step (prompt, separators, recent tokens).
    """
    positions = state.positions[FULL]
    buckets = torch.full((len(positions) + len(probe),), len(steps), dtype=torch.long)
    for i, step in enumerate(steps):
        buckets[: len(positions)][(positions >= step.start) & (positions < step.end)] = i
    saved, saved_positions, saved_next = (
        state.snapshot(),
        dict(state.positions),
        state.next_position,
    )
    full_layers = [i for i, kind in enumerate(state.types) if kind == FULL]
    with capture_attention(
        model,
        list(range(len(probe))),
        key_buckets=buckets.to(model.device),
        num_buckets=len(steps) + 1,
        layers=full_layers,
    ) as capture:
        state.forward(model, probe)
    state.restore(saved, saved_positions, saved_next)
    return capture.stacked().double().cpu()


def reasoning_end_position(trace: Trace, fmt: ChatFormat) -> int:
    """The ``</think>`` token of a thinking model's trace, else the last reasoning token (a
    plain model, or a thinking trace that never closed its reasoning)."""
    ids = trace.all_ids
    end = trace.reasoning_end
    if fmt.think_close_id is not None and end < len(ids) and ids[end] == fmt.think_close_id:
        return end
    return max(end - 1, 0)


def select_receiver_heads(head_step_mass: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """The ``k`` (layer, head) pairs whose attention over steps is most concentrated.

    Args:
        head_step_mass: ``(layers, heads, steps)`` non-negative attention mass per step.

    Concentration is low entropy of the head's distribution over steps: a receiver head puts
    its attention on a few steps, a diffuse head spreads it.
    """
    dist = head_step_mass / head_step_mass.sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = -(dist * dist.clamp_min(1e-12).log()).sum(-1)  # (layers, heads)
    order = torch.argsort(entropy.flatten())[: min(k, entropy.numel())]
    heads = entropy.shape[1]
    return [(int(i) // heads, int(i) % heads) for i in order]


def _parse_layers(spec: str, num_layers: int) -> list[int]:
    half = num_layers // 2
    if spec == "all":
        return list(range(num_layers))
    if spec == "first-half":
        return list(range(half))
    if spec == "last-half":
        return list(range(half, num_layers))
    layers = [int(x) for x in spec.split("+")]
    bad = [x for x in layers if not 0 <= x < num_layers]
    if bad:
        raise SpecError(f"attention: layers {bad} outside 0..{num_layers - 1}")
    return layers


@SCORERS.register("attention")
@dataclass(frozen=True)
class AttentionScorer(Scorer):
    """Attention paid by query tokens to each step; see the module docstring for options."""

    query: Literal["last", "reasoning_end", "answer", "probe"] = "last"
    layers: str = "all"
    heads: Literal["mean", "max", "receiver"] = "mean"
    agg: Literal["sum", "mean"] = "sum"
    sink: Literal["keep", "exclude"] = "keep"
    receivers: PositiveInt = 8
    sink_tokens: NonNegativeInt = 4
    probe: str = DEFAULT_PROBE
    probe_tokens: Literal["last", "all"] = "last"
    calibration: str = ""
    answer: AnswerSource = "own"
    answer_tokens: Literal["all", "values"] = "all"
    # The (layer, head) pairs read from ``calibration`` (empty: chosen per trace).
    calibrated: tuple[tuple[int, int], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        fixed = {"all", "first-half", "last-half"}
        if self.layers not in fixed and not all(x.isdigit() for x in self.layers.split("+")):
            raise SpecError(
                f"attention: layers={self.layers!r}; use all, first-half, last-half or 0+3+7"
            )
        if self.answer != "own" and self.query != "answer":
            # The spec names ``answer`` only with query=answer: refuse it elsewhere rather than
            # build a scorer whose spec does not say what it was asked.
            raise SpecError(f"attention: answer={self.answer} needs query=answer")
        if self.answer_tokens != "all" and self.query != "answer":
            raise SpecError(f"attention: answer_tokens={self.answer_tokens} needs query=answer")
        if self.calibration:
            self._load_calibration()

    def _load_calibration(self) -> None:
        """Read the receiver-head file now, so a bad file fails before any work."""
        if self.heads != "receiver" or self.layers != "all":
            raise SpecError(
                "attention: calibration= fixes the receiver heads; use it with heads=receiver "
                "and layers=all"
            )
        try:
            heads = tuple(load_receiver_heads(self.calibration))
        except ValueError as error:
            raise SpecError(f"attention: calibration: {error}") from None
        object.__setattr__(self, "calibrated", heads)
        object.__setattr__(self, "receivers", len(heads))

    @property
    def spec(self) -> str:
        parts = [f"query={self.query}"]
        if self.query == "probe":
            parts.append(f"probe_tokens={self.probe_tokens}")
        if self.query == "answer":
            parts.append(f"answer={self.answer}")
            if self.answer_tokens != "all":  # specs written before the option stay the same
                parts.append(f"answer_tokens={self.answer_tokens}")
        parts += [f"layers={self.layers}", f"heads={self.heads}"]
        if self.calibration:
            parts.append(f"calibration={self.calibration}")
        elif self.heads == "receiver":
            parts.append(f"receivers={self.receivers}")
        parts += [f"agg={self.agg}", f"sink={self.sink}"]
        if self.sink == "exclude":
            parts.append(f"sink_tokens={self.sink_tokens}")
        return "attention:" + ",".join(parts)

    def _queries(
        self, model: PreTrainedModel, trace: Trace, fmt: ChatFormat, gold: str | None
    ) -> tuple[list[int], list[int]]:
        """The ids of the forward pass and the query positions within it."""
        ids = trace.all_ids
        if self.query == "last":
            return ids, [len(ids) - 1]
        if self.query == "reasoning_end":
            return ids, [reasoning_end_position(trace, fmt)]
        if self.query == "answer":
            return self._answer_queries(model, trace, fmt, gold)
        probe = self.probe_ids(fmt)
        prefix = ids[: trace.reasoning_end]
        return prefix + probe, [len(prefix) + i for i in self.probe_queries(probe, fmt)]

    def _answer_queries(
        self, model: PreTrainedModel, trace: Trace, fmt: ChatFormat, gold: str | None
    ) -> tuple[list[int], list[int]]:
        """``query=answer``: the context through the reasoning, then the answer ``answer``
        names; queries from the end of reasoning to the end."""
        if self.answer == "reference":
            # Every step kept, the context holds the steps at the trace's own positions.
            context = text_context(fmt, trace, [True] * len(trace.steps))
            ids = context + answer_target_ids(fmt, self.gold_of(gold))
        elif trace.teacher_forced:
            # The answer section is the program's reference: read the model's own instead.
            context, answer = decode_own_answer(model, fmt, trace)
            ids = context + answer
        else:
            ids = trace.all_ids
        positions = list(range(trace.reasoning_end, len(ids)))
        if self.answer_tokens == "values":  # the positions that predict an ASCII digit
            decode = fmt.tokenizer.decode
            values = [p for p in positions[:-1] if set(decode(ids[p + 1])) & set(string.digits)]
            positions = values or positions  # an answer without digits: all of it
        return ids, positions or [len(ids) - 1]  # a truncated trace has no answer span

    @property
    def reads_gold(self) -> bool:  # type: ignore[override]
        """``query=answer,answer=reference`` reads the reference answer: an oracle."""
        return self.query == "answer" and self.answer == "reference"

    def probe_queries(self, probe: list[int], fmt: ChatFormat) -> list[int]:
        """Offsets within ``probe`` that query: all of them, or the end-of-thinking token."""
        if self.probe_tokens == "all":
            return list(range(len(probe)))
        if fmt.think_close_id is not None and fmt.think_close_id in probe:
            return [len(probe) - 1 - probe[::-1].index(fmt.think_close_id)]
        return [len(probe) - 1]

    @property
    def reads_answer_section(self) -> bool:
        """Whether the query reads the trace's answer section (``last``: the token after it):
        the reference answer on a teacher-forced trace, so an oracle there. ``query=answer``
        reads the model's own answer instead (or, with ``answer=reference``, reads the
        reference itself: ``reads_gold``)."""
        return self.query == "last"

    def step_mass(
        self, model: PreTrainedModel, trace: Trace, fmt: ChatFormat, gold: str | None = None
    ) -> torch.Tensor:
        """Per-step attention ``(layers, heads, queries, steps)``, after sink handling and
        step aggregation, before any layer/head/query reduction."""
        ids, positions = self._queries(model, trace, fmt, gold)
        buckets, num_buckets = key_buckets(trace, len(ids), self.sink_tokens)
        mass = step_attention_mass(model, ids, positions, buckets, num_buckets).double()
        n = len(trace.steps)
        steps = mass[..., :n]
        if self.sink == "exclude":
            kept_total = mass.sum(-1) - mass[..., n] - mass[..., n + 1]
            steps = steps / kept_total.clamp_min(1e-12).unsqueeze(-1)
        if self.agg == "mean":
            lengths = torch.tensor([s.num_tokens for s in trace.steps], dtype=steps.dtype)
            steps = steps / lengths
        return steps

    def score(
        self,
        model: PreTrainedModel,
        trace: Trace,
        fmt: ChatFormat,
        gold: str | None = None,
    ) -> list[float]:
        if not trace.steps:
            return []
        return self._reduce(self.step_mass(model, trace, fmt, gold))

    @property
    def needs_model_config(self) -> bool:
        """Whether ``check_model`` has something to check: explicit layer indices or
        calibrated heads."""
        return self.layers not in {"all", "first-half", "last-half"} or bool(self.calibrated)

    def check_model(self, config: PretrainedConfig, cached_only: bool = False) -> None:
        """Refuse layer indices that the model does not have, before any work.

        Args:
            config: The model's config (read before loading its weights, or the loaded one's).
            cached_only: Online mode: ``layers`` indexes the full-attention layers only.
        """
        text = config.get_text_config()
        types = getattr(text, "layer_types", None) or [FULL] * text.num_hidden_layers
        count = sum(kind == FULL for kind in types) if cached_only else len(types)
        if self.layers not in {"all", "first-half", "last-half"}:
            bad = [x for x in map(int, self.layers.split("+")) if not 0 <= x < count]
            if bad:
                what = f"{count} full-attention layers" if cached_only else f"{count} layers"
                raise SpecError(
                    f"--scorer {self.spec}: layers {bad} outside 0..{count - 1} (the model "
                    f"has {what})"
                )
        if self.calibrated:
            self._check_calibrated(len(types), text.num_attention_heads, cached_only, types)

    def _check_calibrated(
        self, layers: int, heads: int, cached_only: bool, types: list[str]
    ) -> None:
        """Refuse calibrated heads that the model does not have."""
        bad = [(lay, h) for lay, h in self.calibrated if lay >= layers or h >= heads]
        if bad:
            raise SpecError(
                f"--scorer {self.spec}: receiver heads {bad} are not in this model ({layers} "
                f"layers x {heads} heads): the file was calibrated on another model"
            )
        if cached_only and any(kind != FULL for kind in types):
            # Online scoring reads the full-attention layers only: indices would shift.
            raise SpecError(
                f"--scorer {self.spec}: calibrated heads index all layers; online mode reads "
                "only the full-attention layers of this model"
            )

    def online_problem(self) -> str | None:
        """Why this variant cannot score cached steps during generation (None: it can)."""
        if self.query != "probe":
            return f"query={self.query} needs the finished trace; use query=probe"
        if self.sink == "exclude":
            return "sink=exclude needs the separators of the finished trace"
        return None

    def score_cache(
        self, model: PreTrainedModel, fmt: ChatFormat, state: KVState, steps: list[Step]
    ) -> list[float]:
        """Score ``steps`` (all in ``state``'s full-attention entries) by the probe's attention,
        then drop the probe from the cache again (online mode's checkpoints).

        Only the full-attention layers are read: sliding-window layers no longer hold the
        older steps. ``layers`` indexes those layers.
        """
        if self.online_problem():
            return super().score_cache(model, fmt, state, steps)
        probe = self.probe_ids(fmt)
        mass = cached_probe_mass(model, state, probe, steps)[..., : len(steps)]
        mass = mass[:, :, self.probe_queries(probe, fmt)]
        if self.agg == "mean":
            mass = mass / torch.tensor([s.num_tokens for s in steps], dtype=mass.dtype)
        return self._reduce(mass)

    def probe_ids(self, fmt: ChatFormat) -> list[int]:
        """The probe's tokens: the instruction, then the end-of-reasoning cue."""
        return fmt.encode(f"\n\n{self.probe}\n") + fmt.answer_cue_ids()

    def _reduce(self, steps: torch.Tensor) -> list[float]:
        """``(layers, heads, queries, steps)`` -> one normalised importance per step."""
        steps = steps[_parse_layers(self.layers, steps.shape[0])]  # (layers', heads, q, steps)
        if self.heads == "mean":
            per_layer = steps.mean(1)
        elif self.heads == "max":
            per_layer = steps.max(1).values
        else:
            chosen = self.calibrated or select_receiver_heads(steps.mean(2), self.receivers)
            if self.calibrated:
                self._check_calibrated(steps.shape[0], steps.shape[1], False, [])
            per_layer = torch.stack([steps[layer, head] for layer, head in chosen])
        return normalise(per_layer.mean(0).mean(0).numpy().astype(np.float64))
