"""``redundancy`` is R-KV's score: each part against the formula written out from the paper and
the reference code's description, on fixtures and a tiny model (eager attention, cached keys)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache

from stepprune.schema import Step, Trace
from stepprune.scorers import SCORERS
from stepprune.scorers import rkv as rkv_module
from stepprune.scorers.rkv import rkv_importance, rkv_redundancy
from tests.conftest import eager_attentions, tiny_model


def _direct_redundancy(keys: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Loops: cosine per head, diagonal 0, each row's newest j with cos > threshold set to 0
    (column 0 when none, as the reference does), mean over rows, softmax over keys."""
    heads, n, _ = keys.shape
    out = torch.zeros(heads, n, dtype=torch.float64)
    for h in range(heads):
        cos = [[0.0] * n for _ in range(n)]
        for i in range(n):
            for j in range(n):
                if i != j:
                    a, b = keys[h, i], keys[h, j]
                    cos[i][j] = float(a @ b / ((a.norm() + 1e-8) * (b.norm() + 1e-8)))
            newest = max([j for j in range(n) if cos[i][j] > threshold], default=0)
            cos[i][newest] = 0.0
        mean = [sum(cos[i][j] for i in range(n)) / n for j in range(n)]
        total = sum(math.exp(m) for m in mean)
        out[h] = torch.tensor([math.exp(m) / total for m in mean])
    return out


def test_redundancy_formula_with_near_duplicates(monkeypatch) -> None:
    torch.manual_seed(0)
    keys = torch.randn(2, 9, 4, dtype=torch.float64)
    keys[:, 6] = keys[:, 2] + 0.01  # a near-duplicate pair
    keys[0, 8] = keys[0, 2] * 2
    expected = _direct_redundancy(keys)
    assert torch.allclose(rkv_redundancy(keys), expected, atol=1e-10)
    monkeypatch.setattr(rkv_module, "_ROW_BLOCK", 2)  # row blocks give the same result
    assert torch.allclose(rkv_redundancy(keys), expected, atol=1e-10)


def test_importance_is_windowed_renormalised_max_pooled() -> None:
    torch.manual_seed(1)
    rows = torch.rand(2, 3, 12, dtype=torch.float64)
    rows = rows / rows.sum(-1, keepdim=True)
    got = rkv_importance(rows, window=3, kernel=3)
    for h in range(2):
        before = rows[h, :, :9] / rows[h, :, :9].sum(-1, keepdim=True)
        mean = before.mean(0)
        pooled = [max(mean[max(j - 1, 0) : j + 2]) for j in range(9)]
        assert torch.allclose(got[h], torch.stack(pooled), atol=1e-12)


def test_step_scores_on_a_tiny_model() -> None:
    model = tiny_model("qwen2", vocab_size=100)  # 4 query heads, 2 KV heads
    ids = [(7 * i) % 90 + 1 for i in range(40)]
    steps = [Step(0, 5, 14, ""), Step(1, 14, 22, ""), Step(2, 22, 36, "")]
    trace = Trace("p", 0, ids[:5], ids[5:], 5, 36, True, True, True, False, steps)
    scores = SCORERS.build("redundancy").score(model, trace, None)
    # Independently: eager rows of the last 8 queries, keys from the cache.
    prefix = ids[:36]
    attentions = eager_attentions(model, prefix)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(torch.tensor([prefix]), past_key_values=cache, use_cache=True)
    per_token = torch.zeros(28, dtype=torch.float64)
    for layer, att in enumerate(attentions):
        keys = cache.layers[layer].keys[0].double()
        rows = att[0, :, -8:, :].double().view(2, 2, 8, 36).mean(1)
        importance = rkv_importance(rows, 8, 7)
        redundancy = _direct_redundancy(keys)[:, :28]
        per_token += (0.07 * importance - 0.93 * redundancy).sum(0)
    per_token /= 2 * len(attentions)
    raw = [
        float(per_token[5:14].mean()),
        float(per_token[14:22].mean()),
        float(per_token[22:28].mean()),  # the step's tokens before the window
    ]
    low = min(raw)
    expected = [(r - low) / sum(x - low for x in raw) for r in raw]
    assert scores == pytest.approx(expected, abs=1e-6)
    assert SCORERS.build("redundancy").spec == (
        "redundancy:lambda=0.07,window=8,kernel=7,threshold=0.5"
    )
