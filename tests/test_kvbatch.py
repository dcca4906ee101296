"""Batched kv re-evaluation and the growing cache layer: the same answers as one at a time."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from stepprune.decoding import EOS, LENGTH
from stepprune.kvcache import (
    FULL,
    POSITION_SCHEMES,
    GrowLayer,
    decode_greedy,
    decode_greedy_rows,
    prefill,
)
from tests.conftest import tiny_model
from tests.test_kvcache import ARCHS, _ids, _model

# Keep masks of different sizes (evicted spans) and cues of different lengths.
EVICTIONS = [[], [3, 4, 10, 11, 20], list(range(5, 18)), [1, 2, 25, 26, 27, 28], list(range(8, 29))]
CUES = [[5, 6, 7], [9], [11, 12], [5, 6, 7, 8, 13], [14]]


class ModuloStop:
    """Stops a row at the first token divisible by ``k`` (rows end at different steps)."""

    def __init__(self, k: int | None) -> None:
        self.k = k

    def stop(self, ids):
        return EOS if self.k and ids and ids[-1] % self.k == 0 else None


def _keep(evict: list[int], n: int) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[evict] = False
    return keep


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("scheme", ["original", "rerotate"])
@pytest.mark.parametrize("k", [7, None])
def test_batched_rows_decode_what_each_row_decodes_alone(
    name: str, scheme: str, k: int | None
) -> None:
    model, ids = _model(name), _ids()
    full, _ = prefill(model, ids)
    place = POSITION_SCHEMES[scheme]
    keeps = [_keep(e, len(ids)) for e in EVICTIONS]
    rule = ModuloStop(k)
    alone = [
        decode_greedy(model, place(full.gather(keep), model), cue, 12, rule)
        for keep, cue in zip(keeps, CUES, strict=True)
    ]
    lengths = {kind: [len(p)] * len(keeps) for kind, p in full.positions.items()}
    lengths[FULL] = [int(keep.sum()) for keep in keeps]
    states = (place(full.gather(keep), model) for keep in keeps)
    batched = decode_greedy_rows(model, states, lengths, CUES, 12, rule)
    assert batched == alone
    if k == 7:  # rows stopped at different steps
        assert len({len(c.ids) for c in alone}) > 1 and any(c.stop == EOS for c in alone)
    else:
        assert all(c.stop == LENGTH and len(c.ids) == 12 for c in batched)


def test_batched_logits_equal_an_explicit_mask() -> None:
    """Row r's first-step logits equal one forward pass over the whole sequence whose mask hides
    row r's evicted entries from the cue."""
    model, ids = _model("qwen2-sliding"), _ids()
    full, _ = prefill(model, ids)
    keeps = [_keep(e, len(ids)) for e in EVICTIONS[:3]]
    cue = [5, 6, 7]
    from stepprune.kvcache import RowBatch

    lengths = {kind: len(p) for kind, p in full.positions.items()}
    lengths[FULL] = max(int(k.sum()) for k in keeps)
    batch = RowBatch(model, (full.gather(k) for k in keeps), len(keeps), lengths)
    logits = batch.forward([cue] * len(keeps))
    window = model.config.sliding_window
    for row, evict in enumerate(EVICTIONS[:3]):
        n = len(ids) + len(cue)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        hide = causal.clone()
        hide[len(ids) :, evict] = False
        pos = torch.arange(n)
        slide = causal & (pos[None, :] > pos[:, None] - window)
        mask = {"full_attention": hide[None, None], "sliding_attention": slide[None, None]}
        with torch.inference_mode():
            ref = model(torch.tensor([ids + cue]), attention_mask=mask).logits[0, -1]
        assert (logits[row] - ref).abs().max().item() < 1e-4


def test_grow_layer_decodes_like_the_dynamic_cache_and_restores_snapshots(monkeypatch) -> None:
    monkeypatch.setattr("stepprune.kvcache.GROW_CHUNK", 4)  # regrow several times
    model = tiny_model("qwen2", vocab_size=200, eos_token_id=0)
    ids = _ids()
    state, _ = prefill(model, ids[:10])
    assert all(isinstance(layer, GrowLayer) for layer in state.cache.layers)
    saved, positions, nxt = state.snapshot(), dict(state.positions), state.next_position
    buffer = state.cache.layers[0]._k
    state.forward(model, [1, 2, 3])  # a probe, then undone
    state.restore(saved, positions, nxt)
    assert state.cache.layers[0]._k is buffer  # restoring a view only moves the fill mark
    got = [state.forward(model, [t])[-1] for t in ids[10:]]  # grows past its first buffer
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        out = model(torch.tensor([ids]), past_key_values=cache, use_cache=True).logits[0, 10:]
    assert torch.stack(got).sub(out).abs().max().item() < 1e-4
    assert state.cache.layers[0].keys.shape[2] == len(ids)
