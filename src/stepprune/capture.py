"""Exact attention rows for a few query positions, without materialising attention matrices.

``output_attentions=True`` stores layers x heads x N x N weights: at N = 32k that is far more
memory than the model. Instead we register an attention function with transformers'
``AttentionInterface``. It returns the normal output through SDPA and, only for the selected
query positions, recomputes ``softmax(q_sel . K^T * scale + mask)`` against all keys, reducing over
heads on the fly. Because it receives post-RoPE (and post q/k-norm) queries and keys, it needs no
model-specific code. Extra memory is O(layers x queries x keys).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

CAPTURE_IMPLEMENTATION = "stepprune_capture"


@dataclass
class AttentionCapture:
    """Attention rows collected during one forward pass.

    ``query_positions`` index the queries of the captured forward call (negative values count from
    its end). After the forward, ``rows[layer]`` has shape ``(queries, keys)`` (mean over heads),
    or ``(heads, queries, keys)`` when ``per_head`` is set; float32, on the model's device.

    With ``key_buckets`` (one bucket id per key position, ``(keys,)`` long tensor), each row is
    summed per bucket on the fly instead: ``rows[layer]`` is ``(heads, queries, num_buckets)``.
    This is how step scores stay O(layers x heads x queries x steps) at any trace length.
    """

    query_positions: Sequence[int]
    per_head: bool = False
    key_buckets: torch.Tensor | None = None
    num_buckets: int = 0
    layers: frozenset[int] | None = None
    rows: dict[int, torch.Tensor] = field(default_factory=dict)
    # Queries per block: bounds the transient (heads x block x keys) float32 logits.
    query_block: int = 64

    def stacked(self) -> torch.Tensor:
        """Recorded layers in layer order: ``(layers, queries, keys)`` or
        ``(layers, heads, q, k)``."""
        if not self.rows:
            raise RuntimeError("no attention was captured: did the forward pass run?")
        return torch.stack([self.rows[i] for i in sorted(self.rows)])

    def record(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
    ) -> None:
        """Compute and store the selected rows of one layer.

        Args:
            query: ``(1, heads, q_len, head_dim)``, post-RoPE.
            key: ``(1, kv_heads, k_len, head_dim)``, the full key cache of this layer.
            attention_mask: ``None`` (plain causal), boolean ``(1, 1, q_len, k_len)`` with True
                meaning "may attend", or additive float of the same shape.
        """
        layer = int(getattr(module, "layer_idx", len(self.rows)))
        if self.layers is not None and layer not in self.layers:
            return
        if query.shape[0] != 1:
            raise ValueError(f"attention capture needs batch size 1, got {query.shape[0]}")
        q_len = query.shape[2]
        positions = torch.tensor(
            [p if p >= 0 else q_len + p for p in self.query_positions], device=query.device
        )
        blocks = [
            self._rows(query, key, attention_mask, scaling, block)
            for block in positions.split(self.query_block)
        ]
        rows = torch.cat(blocks, dim=1)  # (heads, sel, keys or buckets)
        self.rows[layer] = rows if self.per_head or self.key_buckets is not None else rows.mean(0)

    def _rows(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """Softmax rows ``(heads, len(positions), keys)``, or bucket sums of them."""
        _, num_heads, q_len, head_dim = query.shape
        kv_heads, k_len = key.shape[1], key.shape[2]
        selected = query[0, :, positions, :].float()  # (heads, sel, head_dim)
        groups = num_heads // kv_heads
        # Grouped-query attention: fold the query heads of a group together instead of repeating
        # the keys, so no copy of the key cache is made.
        grouped = selected.reshape(kv_heads, groups * len(positions), head_dim)
        logits = torch.matmul(grouped, key[0].float().transpose(-1, -2)) * scaling
        logits = logits.reshape(num_heads, len(positions), k_len)
        if attention_mask is None:
            # Queries are the last q_len positions of the key sequence.
            query_abs = positions + (k_len - q_len)
            key_idx = torch.arange(k_len, device=query.device)
            logits = logits.masked_fill(
                key_idx[None, None, :] > query_abs[None, :, None], -torch.inf
            )
        else:
            mask_rows = attention_mask[0, :, positions, :k_len]  # (1 or heads, sel, keys)
            if mask_rows.dtype == torch.bool:
                logits = logits.masked_fill(~mask_rows, -torch.inf)
            else:
                logits = logits + mask_rows.float()
        probs = torch.softmax(logits, dim=-1)
        if self.key_buckets is None:
            return probs
        sums = probs.new_zeros(num_heads, len(positions), self.num_buckets)
        return sums.index_add_(2, self.key_buckets.to(probs.device)[:k_len], probs)


_ACTIVE: contextvars.ContextVar[AttentionCapture | None] = contextvars.ContextVar(
    "stepprune_attention_capture", default=None
)


def _capture_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA attention that also records the active capture's rows (same signature as SDPA's)."""
    output = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    capture = _ACTIVE.get()
    if capture is not None:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        capture.record(module, query, key, attention_mask, scale)
    return output


def _register() -> None:
    AttentionInterface.register(CAPTURE_IMPLEMENTATION, _capture_attention_forward)
    # SDPA's mask format: None for plain causal attention (no N x N tensor at all), boolean
    # otherwise (padding, sliding windows).
    AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, sdpa_mask)


_register()


def _configs(model: PreTrainedModel) -> list:
    """The model's config and its sub-configs (multimodal wrappers keep a text config)."""
    configs = [model.config]
    for name in getattr(model.config, "sub_configs", {}) or {}:
        sub = getattr(model.config, name, None)
        if sub is not None:
            configs.append(sub)
    return configs


@contextlib.contextmanager
def capture_attention(
    model: PreTrainedModel,
    query_positions: Sequence[int],
    per_head: bool = False,
    key_buckets: torch.Tensor | None = None,
    num_buckets: int = 0,
    layers: Sequence[int] | None = None,
) -> Iterator[AttentionCapture]:
    """Within the block, forward passes of ``model`` record attention rows of ``query_positions``.

    The model must run with batch size 1. The original attention implementation is restored on
    exit, even on error. See ``AttentionCapture`` for ``key_buckets``; ``layers`` restricts
    recording to those layer indices (e.g. the full-attention layers of a hybrid model).
    """
    capture = AttentionCapture(
        query_positions=list(query_positions),
        per_head=per_head,
        key_buckets=key_buckets,
        num_buckets=num_buckets,
        layers=None if layers is None else frozenset(layers),
    )
    with recording(model, capture):
        yield capture


@contextlib.contextmanager
def recording(model: PreTrainedModel, capture) -> Iterator[None]:
    """Within the block, every attention layer of ``model`` runs SDPA and then calls
    ``capture.record(module, query, key, attention_mask, scaling)`` (an ``AttentionCapture``,
    or anything with that method: batched online mode records several rows). The original
    attention implementation is restored on exit, even on error."""
    configs = _configs(model)
    previous = [c._attn_implementation for c in configs]
    token = _ACTIVE.set(capture)
    try:
        for c in configs:
            c._attn_implementation = CAPTURE_IMPLEMENTATION
        yield
    finally:
        for c, impl in zip(configs, previous, strict=True):
            c._attn_implementation = impl
        _ACTIVE.reset(token)


def last_token_attention(model: PreTrainedModel, input_ids: Sequence[int]) -> torch.Tensor:
    """Attention of the last position to every position, mean over heads, per layer.

    One forward pass over ``input_ids`` (no cache kept, logits only for the last position).

    Returns:
        float32 tensor ``(layers, len(input_ids))`` on the CPU.
    """
    ids = torch.tensor([list(input_ids)], device=model.device)
    with torch.inference_mode(), capture_attention(model, [-1]) as capture:
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return capture.stacked()[:, 0, :].cpu()
