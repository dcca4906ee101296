"""A KV cache that can lose entries: prefill once, gather kept positions, decode with exact masks.

``KVState`` wraps a transformers ``DynamicCache`` and remembers the RoPE position of every cached
entry. Full-attention layers can be pruned (entries gathered by index); sliding-window layers
already hold only their last ``window - 1`` positions and are left as they are. Because a pruned
cache no longer matches the positions transformers would infer, every forward pass here passes
explicit ``position_ids`` and explicit boolean masks (one per layer type), built from the
entries' positions:

- full attention: a query at position q sees every cached entry and the new tokens up to q;
- sliding window ``W``: it sees entries with ``q - W < p <= q``.

Positions: ``original`` keeps the positions the entries were computed at and continues after the
original length (gaps where entries were evicted); ``rerotate`` rotates kept keys to contiguous
positions ``0..kept-1`` (RoPE rotations compose: ``R(p') = R(p' - p) R(p)``) and continues after.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from stepprune.decoding import LENGTH, Continuation, StopRule

FULL = "full_attention"
SLIDING = "sliding_attention"


def layer_types(model: PreTrainedModel) -> list[str]:
    """Attention type of every layer (all full for models without sliding windows)."""
    config = model.config
    types = getattr(config, "layer_types", None)
    if types is None:
        types = [FULL] * config.num_hidden_layers
    unknown = set(types) - {FULL, SLIDING}
    if unknown:
        raise ValueError(f"KV pruning supports full and sliding attention, not {sorted(unknown)}")
    return list(types)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_keys(model: PreTrainedModel, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Rotate post-RoPE keys by ``delta`` positions each.

    Args:
        keys: ``(batch, kv_heads, n, head_dim)`` keys rotated at positions p.
        delta: ``(n,)`` long, p' - p for each entry.

    Returns:
        Keys as if they had been rotated at positions p + delta.
    """
    rotary = model.model.rotary_emb
    cos, sin = rotary(keys, delta.to(keys.device)[None, :])  # (1, n, head_dim)
    # cos/sin carry the rope's attention scaling (e.g. YaRN); the keys already have it once.
    scale = getattr(rotary, "attention_scaling", 1.0)
    cos, sin = (cos / scale)[:, None].to(keys.dtype), (sin / scale)[:, None].to(keys.dtype)
    return keys * cos + _rotate_half(keys) * sin


@dataclass
class KVState:
    """A cache plus the position of each entry.

    ``positions[type]`` is ``(entries,)`` long for that layer type (all layers of one type hold
    the same entries). ``next_position`` is the position of the next token.
    """

    cache: DynamicCache
    types: list[str]
    positions: dict[str, torch.Tensor]
    next_position: int
    window: int | None
    config: object

    @property
    def length(self) -> int:
        """Entries held by the full-attention layers (the cache that grows with the trace)."""
        return int(self.positions[FULL].numel()) if FULL in self.positions else 0

    def _masks(
        self, query_positions: torch.Tensor, device: torch.device
    ) -> dict[str, torch.Tensor]:
        masks = {}
        for kind, cached in self.positions.items():
            keys = torch.cat([cached, query_positions])
            visible = keys[None, :] <= query_positions[:, None]
            if kind == SLIDING and self.window is not None:
                visible &= keys[None, :] > query_positions[:, None] - self.window
            masks[kind] = visible[None, None].to(device)
        return masks

    @torch.inference_mode()
    def forward(self, model: PreTrainedModel, ids: list[int], logits: int = 1) -> torch.Tensor:
        """Run ``ids`` through the model, appending them to the cache.

        Returns:
            Logits of the last ``logits`` positions, ``(logits, vocab)`` float32.
        """
        query_positions = torch.arange(self.next_position, self.next_position + len(ids))
        masks = self._masks(query_positions, model.device)
        # Models with one layer type take the mask itself; hybrid ones take the mapping.
        mask: torch.Tensor | dict = masks if len(masks) > 1 else next(iter(masks.values()))
        output = model(
            input_ids=torch.tensor([ids], device=model.device),
            attention_mask=mask,
            position_ids=query_positions[None].to(model.device),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=logits,
        )
        for kind in self.positions:
            grown = torch.cat([self.positions[kind], query_positions])
            if kind == SLIDING and self.window is not None:
                grown = grown[-(self.window - 1) :]  # what DynamicSlidingWindowLayer keeps
            self.positions[kind] = grown
        self.next_position += len(ids)
        return output.logits[0].float()

    def snapshot(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """References to every layer's tensors (updates replace them, so this is cheap)."""
        return [(layer.keys, layer.values) for layer in self.cache.layers]

    def restore(self, saved: list[tuple[torch.Tensor, torch.Tensor]], positions: dict, nxt: int):
        """Undo forwards since ``snapshot`` (e.g. a probe that must not stay in the cache)."""
        for layer, (keys, values) in zip(self.cache.layers, saved, strict=True):
            layer.keys, layer.values = keys, values
        self.positions = dict(positions)
        self.next_position = nxt

    def gather(self, keep: torch.Tensor) -> KVState:
        """A pruned copy: full-attention layers keep the entries where ``keep`` is True, at the
        positions they were computed at (gaps where entries left).

        Args:
            keep: ``(length,)`` bool over the full-attention entries.
        """
        if keep.shape != (self.length,):
            raise ValueError(f"keep mask has shape {tuple(keep.shape)}, cache has {self.length}")
        index = keep.nonzero().flatten()
        cache = DynamicCache(config=self.config)
        for i, (layer, kind) in enumerate(zip(self.cache.layers, self.types, strict=True)):
            keys, values = layer.keys, layer.values
            if kind == FULL:
                device_index = index.to(keys.device)
                keys, values = keys[:, :, device_index], values[:, :, device_index]
            cache.update(keys.clone(), values.clone(), i)
        positions = {**self.positions, FULL: self.positions[FULL][index]}
        return KVState(cache, self.types, positions, self.next_position, self.window, self.config)


def rerotate(state: KVState, model: PreTrainedModel) -> KVState:
    """``state`` with its full-attention keys rotated to contiguous positions ``0..n-1`` and the
    next token at ``n``; sliding-window entries slide by the same offset, so they still sit
    just before the next token. Composes after ``KVState.gather``.
    """
    old = state.positions[FULL]
    new = torch.arange(len(old))
    next_position = len(old)
    offset = next_position - state.next_position
    cache = DynamicCache(config=state.config)
    for i, (layer, kind) in enumerate(zip(state.cache.layers, state.types, strict=True)):
        delta = new - old if kind == FULL else torch.full((layer.keys.shape[2],), offset)
        cache.update(rotate_keys(model, layer.keys, delta), layer.values, i)
    positions = {FULL: new}
    if SLIDING in state.positions:
        positions[SLIDING] = state.positions[SLIDING] + offset
    return KVState(cache, state.types, positions, next_position, state.window, state.config)


POSITION_SCHEMES = {"original": lambda state, model: state, "rerotate": rerotate}


def prefill(model: PreTrainedModel, ids: list[int]) -> tuple[KVState, torch.Tensor]:
    """Cache of ``ids`` at positions ``0..len-1``; returns the state and the last logits
    ``(vocab,)``."""
    types = layer_types(model)
    window = getattr(model.config, "sliding_window", None) if SLIDING in types else None
    empty = torch.zeros(0, dtype=torch.long)
    positions = {kind: empty for kind in dict.fromkeys(types)}
    state = KVState(DynamicCache(config=model.config), types, positions, 0, window, model.config)
    logits = state.forward(model, ids)
    return state, logits[-1]


@torch.inference_mode()
def decode_greedy(
    model: PreTrainedModel, state: KVState, cue: list[int], max_new_tokens: int, rule: StopRule
) -> Continuation:
    """Append ``cue`` to the cache and decode greedily until ``rule`` stops or the budget ends."""
    logits = state.forward(model, cue)[-1]
    ids: list[int] = []
    for _ in range(max_new_tokens):
        ids.append(int(torch.argmax(logits)))
        stop = rule.stop(ids)
        if stop is not None:
            return Continuation(ids, stop)
        logits = state.forward(model, [ids[-1]])[-1]
    return Continuation(ids, LENGTH)
