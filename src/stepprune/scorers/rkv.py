"""``redundancy``: R-KV's token score (arXiv 2505.24133; Zefan-Cai/R-KV, ``r1_kv.py`` and
``utils.cal_similarity``), computed on the reasoning and averaged over each step's tokens.

One forward over prompt + reasoning (through ``</think>`` for thinking models). For every layer
and KV head, over the ``N`` cached keys (after RoPE):

- **Importance.** The last ``window`` (8) positions are the observation window. Each window
  query's attention over the keys before the window is renormalised to sum 1 (a softmax over
  those keys' logits), averaged over the window queries, and max-pooled along the keys with
  ``kernel`` (7, padding 3, stride 1).
- **Redundancy.** ``cos[i, j]`` between the keys of tokens ``i`` and ``j``, diagonal zeroed;
  in each row ``i`` the newest ``j`` with ``cos > threshold`` (0.5) is set to 0 (the newest
  near-duplicate is exempt), then the mean over rows ``i`` gives a value per key ``j``, and a
  softmax over the keys makes it a distribution.
- **Score.** ``lambda * importance - (1 - lambda) * redundancy`` with ``lambda = 0.07``.

A token's score is the mean over layers and KV heads (R-KV keeps tokens per head and layer; a
step has one score), a step's the mean over its tokens before the window (R-KV never evicts the
window: a step entirely inside it gets the highest score of the trace), and the step scores are
shifted to a minimum of 0 and normalised.

Remaining deviations from R-KV: (1) R-KV max-pools the query heads of a KV group on their logits
before the softmax; here their softmaxed rows are averaged (the capture yields probabilities);
(2) R-KV scores at every compression step during decoding; here once, on the finished reasoning;
(3) the cosine matrix is ``N x N`` per head, computed in row blocks (memory O(block x N)).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

from stepprune.capture import capture_attention
from stepprune.models import ChatFormat
from stepprune.registry import Fraction, PositiveInt, spec_key
from stepprune.schema import Trace
from stepprune.scorers.base import SCORERS, Scorer, normalise

RKV_LAMBDA = 0.07
_ROW_BLOCK = 512


def rkv_redundancy(keys: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """R-KV's redundancy of each key: ``(heads, N, dim)`` -> ``(heads, N)``, each row a softmax.

    Diagonal zeroed, each row's newest near-duplicate (``cos > threshold``) zeroed, mean over
    rows, softmax over keys. Rows are processed in blocks, so memory is O(block x N) per head.
    """
    heads, n, _ = keys.shape
    unit = keys / (keys.norm(dim=-1, keepdim=True) + 1e-8)
    column_sums = torch.zeros(heads, n, dtype=keys.dtype)
    positions = torch.arange(n)
    for start in range(0, n, _ROW_BLOCK):
        rows = torch.arange(start, min(start + _ROW_BLOCK, n))
        cos = unit[:, rows] @ unit.transpose(1, 2)  # (heads, block, N)
        cos[:, torch.arange(len(rows)), rows] = 0.0
        newest = torch.where(cos > threshold, positions, torch.zeros_like(positions)).amax(-1)
        # Like the reference, a row without a near-duplicate zeroes its column 0.
        cos.scatter_(-1, newest.unsqueeze(-1), 0.0)
        column_sums += cos.sum(1)
    return (column_sums / n).softmax(-1)


def rkv_importance(window_rows: torch.Tensor, window: int, kernel: int) -> torch.Tensor:
    """R-KV's importance: ``(heads, window, N)`` attention rows of the window queries ->
    ``(heads, N - window)``: renormalised over the keys before the window, mean over the
    queries, max-pooled with ``kernel``."""
    before = window_rows[..., : window_rows.shape[-1] - window]
    before = before / before.sum(-1, keepdim=True).clamp_min(1e-30)
    mean = before.mean(1)
    return F.max_pool1d(mean.unsqueeze(1), kernel, stride=1, padding=kernel // 2).squeeze(1)


@SCORERS.register("redundancy")
@dataclass(frozen=True)
class RKVScorer(Scorer):
    """R-KV's score per step; see the module docstring. ``weight`` is the spec's ``lambda``."""

    weight: Fraction = field(default=RKV_LAMBDA, metadata=spec_key("lambda"))
    window: PositiveInt = 8
    kernel: PositiveInt = 7
    threshold: Fraction = 0.5

    def token_scores(self, model: PreTrainedModel, ids: list[int]) -> np.ndarray:
        """``lambda * importance - (1 - lambda) * redundancy`` per key before the window,
        averaged over layers and KV heads: float64 ``(len(ids) - window,)``."""
        window = min(self.window, len(ids) - 1)
        cache = DynamicCache(config=model.config)
        queries = list(range(len(ids) - window, len(ids)))
        with torch.inference_mode(), capture_attention(model, queries, per_head=True) as capture:
            model(torch.tensor([ids], device=model.device), past_key_values=cache, use_cache=True)
        total, count = np.zeros(len(ids) - window), 0
        for layer, rows in sorted(capture.rows.items()):
            keys = cache.layers[layer].keys[0].double().cpu()  # (kv_heads, N, dim)
            if keys.shape[1] != len(ids):  # a sliding-window layer dropped early keys
                continue
            rows = rows.double().cpu()  # (heads, window, N)
            kv_heads = keys.shape[0]
            grouped = rows.view(kv_heads, rows.shape[0] // kv_heads, window, -1).mean(1)
            importance = rkv_importance(grouped, window, self.kernel)
            redundancy = rkv_redundancy(keys, self.threshold)[:, : len(ids) - window]
            score = self.weight * importance - (1 - self.weight) * redundancy
            total += score.sum(0).numpy()
            count += kv_heads
        return total / max(count, 1)

    def score(
        self, model: PreTrainedModel, trace: Trace, fmt: ChatFormat, gold: str | None = None
    ) -> list[float]:
        if not trace.steps:
            return []
        ids = trace.all_ids
        end = trace.reasoning_end
        if fmt is not None and fmt.think_close_id is not None and end < len(ids):
            end += ids[end] == fmt.think_close_id  # </think> closes the reasoning
        end = max(end, trace.steps[-1].end)
        tokens = self.token_scores(model, ids[:end])
        scored = len(tokens)
        top = float(tokens.max()) if scored else 0.0
        raw = np.array(
            [
                float(tokens[s.start : min(s.end, scored)].mean()) if s.start < scored else top
                for s in trace.steps
            ]
        )
        return normalise(raw - raw.min())

    def online_problem(self) -> str:
        return "it compares every cached key with every other over the finished reasoning"
