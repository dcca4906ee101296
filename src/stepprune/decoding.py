"""Decoding rules shared by every engine and mode: sampling settings, per-sequence seeded
sampling, when an answer stops, and what a finished continuation is.

    logits -> sampling_probs() -> RowSampler (one generator per sequence)
    ids    -> StopRule.stop() / finish() -> Continuation(ids, stop="eos" | "box" | "length")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

EOS, BOX, LENGTH = "eos", "box", "length"


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings of trace generation (reasoning-model defaults)."""

    # Part of a run folder's identity (``config.IDENTITY``): traces depend on them.
    max_new_tokens: int = field(default=32768, metadata={"identity": "max_new_tokens"})
    temperature: float = field(default=0.6, metadata={"identity": "temperature"})
    top_p: float = field(default=0.95, metadata={"identity": "top_p"})

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.temperature < math.inf:  # also refuses nan, which compares false
            raise ValueError(f"--temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class Continuation:
    """Generated ids of one sequence and why generation stopped.

    ``ids`` ends with the end-of-sequence token when ``stop == "eos"``, with the token that
    closed the box when ``stop == "box"``; ``stop == "length"`` means it ran out of budget.
    """

    ids: list[int]
    stop: str

    @property
    def truncated(self) -> bool:
        return self.stop == LENGTH

    @property
    def content_ids(self) -> list[int]:
        """``ids`` without the end-of-sequence token."""
        return self.ids[:-1] if self.stop == EOS else list(self.ids)


def has_closed_box(text: str) -> bool:
    """Whether the last ``\\boxed{`` in ``text`` has its matching closing brace."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return False
    depth = 0
    for char in text[start + len("\\boxed") :]:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return True
    return False


class StopRule:
    """When greedy answer decoding stops: at an end-of-sequence token, or (with ``box_prefix``,
    the cue text the answer continues) once the answer holds a complete ``\\boxed{...}``.

    The answer is graded from its last box, so text after the first complete box only costs
    time (a small model otherwise rambles to the token budget). The one rule for every engine
    and mode.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        eos_ids: Sequence[int],
        box_prefix: str | None,
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        self.box_prefix = box_prefix

    def stop(self, ids: Sequence[int]) -> str | None:
        """``"eos"`` or ``"box"`` if generation of ``ids`` (so far) is finished, else None."""
        if ids and ids[-1] in self.eos_ids:
            return EOS
        if self.box_prefix is not None and has_closed_box(
            self.box_prefix + self.tokenizer.decode(list(ids))
        ):
            return BOX
        return None

    def finish(self, ids: Sequence[int]) -> Continuation:
        """The continuation cut where this rule first stops it (``"length"`` if it never does).

        For engines that generate past the stop in a batch (other rows were still running).
        """
        ids = list(ids)
        end = next((i for i, token in enumerate(ids) if token in self.eos_ids), None)
        head = ids if end is None else ids[:end]
        if self.box_prefix is not None and has_closed_box(
            self.box_prefix + self.tokenizer.decode(head)
        ):
            cut = next(
                k
                for k in range(1, len(head) + 1)
                if has_closed_box(self.box_prefix + self.tokenizer.decode(head[:k]))
            )
            return Continuation(head[:cut], BOX)
        if end is not None:
            return Continuation(ids[: end + 1], EOS)
        return Continuation(ids, LENGTH)


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Next-token probabilities after temperature and nucleus (top-p) filtering; no top-k.

    Args:
        logits: ``(rows, vocab)``.

    Returns:
        float32 ``(rows, vocab)``, each row summing to 1: the smallest set of most likely tokens
        whose probability reaches ``top_p`` keeps its mass (renormalised), the rest is 0.
        Temperature 0 puts all mass on the argmax.
    """
    logits = logits.float()
    if temperature == 0:
        probs = torch.zeros_like(logits)
        probs[torch.arange(len(logits)), logits.argmax(-1)] = 1.0
        return probs
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Mass strictly before each token: a token is kept while the mass before it is < top_p,
    # so the most likely token is always kept.
    before = sorted_probs.cumsum(-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    filtered = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return filtered / filtered.sum(-1, keepdim=True)


class RowSampler:
    """Draws next tokens for one sequence from its own generator (engines and online mode).

    The generator lives on the device of the logits it first sees, so drawing never copies a
    vocabulary-sized row to the host; the same seed gives the same tokens on one device type.
    """

    def __init__(self, seed: int, sampling: SamplingConfig) -> None:
        self.seed, self.sampling = seed, sampling
        self.generator: torch.Generator | None = None

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """``probs``: ``(vocab,)`` filtered probabilities; the drawn id as a ``(1,)`` tensor on
        their device (no host synchronisation)."""
        if self.generator is None:
            self.generator = torch.Generator(device=probs.device).manual_seed(self.seed)
        return torch.multinomial(probs, 1, generator=self.generator)

    def __call__(self, logits: torch.Tensor) -> int:
        """``logits``: ``(vocab,)``; returns the drawn token id."""
        probs = sampling_probs(logits[None], self.sampling.temperature, self.sampling.top_p)
        return int(self.draw(probs[0]))
