"""The step-redundancy scorer: a base scorer's importance minus how much a step repeats the
others. Inspired by R-KV (arXiv 2505.24133) but not R-KV: it compares one mean vector per
*step* (not keys per token and head), has no near-duplicate exemption, normalises by the sum
(not a softmax) and takes any base scorer; R-KV itself is ``redundancy`` (:mod:`.rkv`). This
was ``redundancy`` before that scorer was made faithful.

Spec: ``step-redundancy[:of=SPEC,lambda=L,layer=N|last,vector=hidden|key]``, defaults
``of=attention``, ``lambda=0.1``, ``layer=last``, ``vector=hidden``. A base spec with options
goes in parentheses: ``step-redundancy:of=(attention:query=probe,agg=mean)``.

One forward over prompt + reasoning gives a vector per step, ``v_i``: the mean over the step's
tokens of

- ``vector=hidden``: the output of decoder layer N (the residual stream, which is
  ``output_hidden_states[N + 1]`` for every layer but the last); ``layer=last`` (the default)
  is the final norm's output, what the LM head reads (``output_hidden_states[-1]``), or
- ``vector=key``: layer N's cached keys (after RoPE, as R-KV reads them), all key heads
  concatenated (``kv_heads * head_dim``).

With ``S`` steps, ``I`` the base scorer's importances (summing to 1) and
``cos`` the cosine similarity::

    red_i = mean_{j != i} cos(v_i, v_j)            (0 when S = 1)
    R     = normalise(max(red, 0))                  (sums to 1, like I: same scale)
    raw_i = lambda * I_i - (1 - lambda) * R_i
    score = normalise(raw - min(raw))               (the most redundant, least important is 0)

The mean (not the max) over the other steps follows R-KV, which averages a token's similarity
to the others: a step that restates one earlier step among many is penalised less than one that
echoes most of them. Cost: the base scorer's, plus one forward over prompt + reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel

from stepprune.kvcache import FULL
from stepprune.models import ChatFormat
from stepprune.registry import Fraction, SpecError, spec_key
from stepprune.schema import Trace
from stepprune.scorers.base import SCORERS, Scorer, normalise
from stepprune.scorers.parts import Composite, build_part

DEFAULT_LAMBDA = 0.1


def _layer_output(output) -> torch.Tensor:
    """A decoder layer's hidden states ``(batch, tokens, dim)`` (some return a tuple)."""
    return output[0] if isinstance(output, tuple) else output


@torch.inference_mode()
def token_vectors(
    model: PreTrainedModel, ids: list[int], layer: int | None, vector: str
) -> torch.Tensor:
    """Per-token vectors of ``ids`` at decoder layer ``layer`` (None: the last).

    Returns:
        float64 ``(len(ids), dim)`` on the CPU: hidden states (``dim = hidden_size``) or cached
        keys after RoPE (``dim = kv_heads * head_dim``).
    """
    base = model.base_model
    input_ids = torch.tensor([ids], device=model.device)
    if vector == "key":
        cache = DynamicCache(config=model.config)
        model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        keys = cache.layers[-1 if layer is None else layer].keys[0]  # (kv_heads, tokens, hd)
        if keys.shape[1] != len(ids):
            raise ValueError(
                f"layer {layer} keeps {keys.shape[1]} of {len(ids)} keys (a sliding-window "
                "layer): use a full-attention layer or vector=hidden"
            )
        return keys.permute(1, 0, 2).flatten(1).double().cpu()
    # A hook on one module keeps one layer's states, not all of them (output_hidden_states).
    module = base.norm if layer is None else base.layers[layer]
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(_layer_output(out)))
    try:
        base(input_ids=input_ids, use_cache=False)
    finally:
        handle.remove()
    return captured[0][0].double().cpu()


def step_redundancy(vectors: torch.Tensor) -> np.ndarray:
    """Mean cosine similarity of each step to the other steps.

    Args:
        vectors: ``(steps, dim)`` one vector per step.

    Returns:
        float64 ``(steps,)``; zeros for a single step.
    """
    n = len(vectors)
    if n < 2:
        return np.zeros(n)
    unit = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos = unit @ unit.T
    return ((cos.sum(-1) - cos.diagonal()) / (n - 1)).numpy()


@SCORERS.register("step-redundancy")
@dataclass(frozen=True)
class RedundancyScorer(Composite):
    """Base importance penalised by redundancy; see the module docstring for the formula.

    ``of`` is the base scorer's spec (canonicalised on construction); ``weight`` is the spec's
    ``lambda`` (a Python keyword, so not a field name).
    """

    of: str = "attention"
    weight: Fraction = field(default=DEFAULT_LAMBDA, metadata=spec_key("lambda"))
    layer: str = "last"
    vector: Literal["hidden", "key"] = "hidden"
    base: Scorer = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        base = build_part(self.of, "step-redundancy", "of")
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "of", base.spec)
        layer = str(self.layer).strip()
        if layer != "last" and not layer.isdigit():
            raise SpecError(f"step-redundancy: layer={self.layer!r}; use last or a layer index")
        object.__setattr__(self, "layer", layer if layer == "last" else str(int(layer)))

    @property
    def parts(self) -> tuple[Scorer, ...]:
        return (self.base,)

    @property
    def layer_index(self) -> int | None:
        return None if self.layer == "last" else int(self.layer)

    @property
    def needs_model_config(self) -> bool:
        return self.layer != "last" or super().needs_model_config

    def check_model(self, config: PretrainedConfig, cached_only: bool = False) -> None:
        """Refuse a layer the model does not have (or, for keys, a sliding-window layer)."""
        super().check_model(config, cached_only)
        text = config.get_text_config()
        count = text.num_hidden_layers
        index = self.layer_index
        if index is not None and index >= count:
            raise SpecError(
                f"--scorer {self.spec}: layer {index} outside 0..{count - 1} (the model has "
                f"{count} layers)"
            )
        types = getattr(text, "layer_types", None) or [FULL] * count
        if self.vector == "key" and types[-1 if index is None else index] != FULL:
            raise SpecError(
                f"--scorer {self.spec}: layer {self.layer} is a sliding-window layer; its "
                "cache drops early keys (use a full-attention layer or vector=hidden)"
            )

    def step_vectors(self, model: PreTrainedModel, trace: Trace) -> torch.Tensor:
        """``(steps, dim)`` float64: the mean vector of each step's tokens."""
        tokens = token_vectors(
            model, trace.all_ids[: trace.steps[-1].end], self.layer_index, self.vector
        )
        return torch.stack([tokens[s.start : s.end].mean(0) for s in trace.steps])

    def combine(self, importance: list[float], redundancy: np.ndarray) -> list[float]:
        """The module docstring's formula, from base importances and raw redundancies."""
        penalty = np.asarray(normalise(np.clip(redundancy, 0.0, None)))
        raw = self.weight * np.asarray(importance, float) - (1 - self.weight) * penalty
        return normalise(raw - raw.min())

    def score(
        self,
        model: PreTrainedModel,
        trace: Trace,
        fmt: ChatFormat,
        gold: str | None = None,
    ) -> list[float]:
        if not trace.steps:
            return []
        importance = self.base.score(model, trace, fmt, gold)
        return self.combine(importance, step_redundancy(self.step_vectors(model, trace)))

    def online_problem(self) -> str:
        return "it compares the steps' hidden states over the finished trace"
