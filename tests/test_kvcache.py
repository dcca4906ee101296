"""Pruned KV caches against explicit attention masks (the exact reference)."""

from __future__ import annotations

import pytest
import torch

from stepprune.kvcache import FULL, POSITION_SCHEMES, SLIDING, prefill, rerotate, rotate_keys
from stepprune.modes import MODES
from tests.conftest import tiny_model

N, CUE = 30, [5, 6, 7]
EVICT = [3, 4, 10, 11, 20]
ARCHS = {
    "llama": {},
    "qwen2": {},
    "qwen3": {},
    "qwen2-sliding": {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
}


def _model(name: str):
    arch = name.split("-")[0]
    return tiny_model(arch, vocab_size=200, eos_token_id=0, **ARCHS[name])


def _ids() -> list[int]:
    return torch.randint(1, 200, (N,), generator=torch.Generator().manual_seed(0)).tolist()


def _masked_reference(model, ids: list[int], hidden: list[int]) -> torch.Tensor:
    """Logits of the cue from one forward pass whose mask hides ``hidden`` from the cue rows
    only (the prefix was computed with everything visible, as the cache was)."""
    n = len(ids) + len(CUE)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    full = causal.clone()
    full[len(ids) :, hidden] = False
    masks = {FULL: full[None, None]}
    if SLIDING in (getattr(model.config, "layer_types", None) or []):
        pos = torch.arange(n)
        window = causal & (pos[None, :] > pos[:, None] - model.config.sliding_window)
        masks[SLIDING] = window[None, None]
    mask = masks if len(masks) > 1 else masks[FULL]
    with torch.inference_mode():
        return model(torch.tensor([ids + CUE]), attention_mask=mask).logits[0, -len(CUE) :]


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("scheme", ["original", "rerotate"])
def test_evicting_nothing_is_the_unpruned_continuation(name: str, scheme: str) -> None:
    model, ids = _model(name), _ids()
    state, _ = prefill(model, ids)
    place = POSITION_SCHEMES[scheme]
    logits = place(state.gather(torch.ones(N, dtype=torch.bool)), model).forward(model, CUE, 3)
    with torch.inference_mode():
        reference = model(torch.tensor([ids + CUE])).logits[0, -3:]
    assert (logits - reference).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", list(ARCHS))
def test_evicting_a_set_equals_a_mask_that_hides_it(name: str) -> None:
    model, ids = _model(name), _ids()
    state, _ = prefill(model, ids)
    keep = torch.ones(N, dtype=torch.bool)
    keep[EVICT] = False
    pruned = state.gather(keep)
    assert pruned.length == N - len(EVICT) and state.length == N  # the full cache is intact
    logits = pruned.forward(model, CUE, 3)
    reference = _masked_reference(model, ids, EVICT)
    assert (logits - reference).abs().max().item() < 1e-4
    unmasked = _masked_reference(model, ids, [])
    assert (logits - unmasked).abs().max().item() > 1e-3  # eviction did change something
    # Decoding on continues to match the masked reference, one token at a time.
    more = pruned.forward(model, [9], 1)
    with torch.inference_mode():
        n = N + len(CUE) + 1
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        mask[N:, EVICT] = False
        if name == "qwen2-sliding":
            pos = torch.arange(n)
            window = torch.ones(n, n, dtype=torch.bool).tril() & (pos[None] > pos[:, None] - 8)
            mask = {FULL: mask[None, None], SLIDING: window[None, None]}
        else:
            mask = mask[None, None]
        ref = model(torch.tensor([ids + CUE + [9]]), attention_mask=mask).logits[0, -1:]
    assert (more - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3"])
def test_rerotated_suffix_eviction_equals_truncation(name: str) -> None:
    """Evicting the last tokens and re-rotating leaves a contiguous prefix: exactly the cache of
    the truncated sequence."""
    model, ids = _model(name), _ids()
    state, _ = prefill(model, ids)
    keep = torch.ones(N, dtype=torch.bool)
    keep[24:] = False
    logits = rerotate(state.gather(keep), model).forward(model, CUE, 3)
    with torch.inference_mode():
        reference = model(torch.tensor([ids[:24] + CUE])).logits[0, -3:]
    assert (logits - reference).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_rerotated_first_layer_keys_equal_keys_computed_at_new_positions(name: str) -> None:
    """Layer-0 keys depend only on the token and its position, so re-rotated kept keys must
    equal the layer-0 keys of the kept tokens prefilled at contiguous positions."""
    model, ids = _model(name), _ids()
    state, _ = prefill(model, ids)
    keep = torch.ones(N, dtype=torch.bool)
    keep[EVICT] = False
    pruned = rerotate(state.gather(keep), model)
    kept_ids = [t for t, k in zip(ids, keep.tolist(), strict=True) if k]
    fresh, _ = prefill(model, kept_ids)
    assert torch.equal(pruned.positions[FULL], torch.arange(len(kept_ids)))
    got, expected = pruned.cache.layers[0].keys, fresh.cache.layers[0].keys
    assert (got - expected).abs().max().item() < 1e-5
    assert pruned.next_position == len(kept_ids)


def test_rotation_round_trip() -> None:
    model = _model("qwen2")
    keys = torch.randn(1, 2, 6, 16)
    delta = torch.tensor([0, 3, -5, 7, -1, 100])
    back = rotate_keys(model, rotate_keys(model, keys, delta), -delta)
    assert (back - keys).abs().max().item() < 1e-5


def test_bad_keep_mask_and_scheme() -> None:
    model = _model("llama")
    state, _ = prefill(model, _ids())
    with pytest.raises(ValueError, match="keep mask has shape"):
        state.gather(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="positions='shifted'"):
        MODES.build("kv:positions=shifted")
