"""Captured attention rows against eager ``output_attentions`` (the reference)."""

from __future__ import annotations

import pytest
import torch

from stepprune.capture import CAPTURE_IMPLEMENTATION, capture_attention, last_token_attention
from tests.conftest import eager_attentions, tiny_model


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])
def test_last_token_rows_match_eager(arch: str) -> None:
    model = tiny_model(arch, vocab_size=200)
    ids = torch.randint(0, 200, (1, 57), generator=torch.Generator().manual_seed(1))
    rows = last_token_attention(model, ids[0].tolist())
    reference = torch.stack([a[0, :, -1, :].mean(dim=0) for a in eager_attentions(model, ids)])
    assert rows.shape == (model.config.num_hidden_layers, 57)
    assert (rows - reference).abs().max().item() < 1e-5
    # Each row is a distribution over the causal prefix.
    assert torch.allclose(rows.sum(dim=-1), torch.ones(rows.shape[0]), atol=1e-5)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_per_head_rows_of_several_positions_match_eager(arch: str) -> None:
    model = tiny_model(arch, vocab_size=200)
    ids = torch.randint(0, 200, (1, 33), generator=torch.Generator().manual_seed(2))
    positions = [0, 7, -2, -1]
    with torch.inference_mode(), capture_attention(model, positions, per_head=True) as capture:
        model(ids)
    reference = torch.stack([a[0][:, positions, :] for a in eager_attentions(model, ids)])
    captured = capture.stacked()
    assert captured.shape == reference.shape == (3, 4, 4, 33)
    assert (captured - reference).abs().max().item() < 1e-5
    # Position 0 attends only to itself: causality is applied.
    assert torch.allclose(captured[:, :, 0, 0], torch.ones(3, 4))


def test_rows_with_a_key_cache_match_eager() -> None:
    """Prefix through the cache, then a few query tokens: the rows span cache + new keys."""
    model = tiny_model("llama", vocab_size=200)
    ids = torch.randint(0, 200, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        cache = model(ids[:, :34], use_cache=True).past_key_values
        with capture_attention(model, [0, 3, 5]) as capture:
            model(ids[:, 34:], past_key_values=cache, use_cache=True)
    reference = torch.stack(
        [a[0][:, [34, 37, 39], :].mean(dim=0) for a in eager_attentions(model, ids)]
    )
    assert (capture.stacked() - reference).abs().max().item() < 1e-5


def test_implementation_is_restored_even_on_error() -> None:
    model = tiny_model("qwen2", vocab_size=50)
    with pytest.raises(RuntimeError), capture_attention(model, [-1]):
        assert model.config._attn_implementation == CAPTURE_IMPLEMENTATION
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


def test_capture_outside_the_block_records_nothing() -> None:
    model = tiny_model("qwen2", vocab_size=50)
    with capture_attention(model, [-1]) as capture:
        pass
    model(torch.tensor([[1, 2, 3]]))
    assert capture.rows == {}
    with pytest.raises(RuntimeError, match="no attention"):
        capture.stacked()
