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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from stepprune.decoding import LENGTH, Continuation, StopRule

FULL = "full_attention"
SLIDING = "sliding_attention"
# A growing layer's buffer gains at least this many entries (or a quarter of its size) when full.
GROW_CHUNK = 256


class GrowLayer(DynamicLayer):
    """A cache layer with room to grow: appends write in place into a preallocated buffer,
    which is reallocated (by ``GROW_CHUNK`` entries or a quarter of its size, whichever is
    more) only when full, instead of ``torch.cat`` copying the whole layer every step.

    ``keys`` / ``values`` are views of the filled part. Assigning a view of the buffer's own
    start (``KVState.restore`` of a ``snapshot``) only moves the fill mark; assigning any other
    tensor adopts it as the buffer.
    """

    def __init__(self) -> None:
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._n = 0
        super().__init__()

    def _view(self, buffer: torch.Tensor | None) -> torch.Tensor | None:
        return None if buffer is None else buffer[:, :, : self._n]

    def _adopt(self, buffer: torch.Tensor | None, tensor: torch.Tensor | None) -> torch.Tensor:
        if tensor is None:
            self._n = 0
            return None
        self._n = tensor.shape[-2]
        own = buffer is not None and tensor.dim() == 4 and tensor.data_ptr() == buffer.data_ptr()
        return buffer if own and tensor.stride() == buffer.stride() else tensor

    keys = property(lambda self: self._view(self._k))
    values = property(lambda self: self._view(self._v))

    @keys.setter
    def keys(self, tensor: torch.Tensor | None) -> None:
        self._k = self._adopt(self._k, tensor)

    @values.setter
    def values(self, tensor: torch.Tensor | None) -> None:
        self._v = self._adopt(self._v, tensor)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def _room(self, buffer: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        need = self._n + new.shape[-2]
        if buffer is not None and buffer.dim() == 4 and need <= buffer.shape[-2]:
            return buffer
        shape = (*new.shape[:2], need + max(GROW_CHUNK, need // 4), new.shape[-1])
        grown = new.new_empty(shape)
        if buffer is not None and self._n:
            grown[:, :, : self._n] = buffer[:, :, : self._n]
        return grown

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._k, self._v = self._room(self._k, key_states), self._room(self._v, value_states)
        end = self._n + key_states.shape[-2]
        self._k[:, :, self._n : end] = key_states
        self._v[:, :, self._n : end] = value_states
        self._n = end
        return self.keys, self.values

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (a finished row leaves a batched decode)."""
        self._k = self._k.index_select(0, rows.to(self._k.device))
        self._v = self._v.index_select(0, rows.to(self._v.device))


def new_cache(model_config, types: Sequence[str], grow_sliding: bool = False) -> DynamicCache:
    """A ``DynamicCache`` whose full-attention layers (and sliding ones with ``grow_sliding``,
    which then keep every entry: masks hide what left the window) are ``GrowLayer``."""
    cache = DynamicCache(config=model_config)
    for i, kind in enumerate(types):
        if kind == FULL or grow_sliding:
            cache.layers[i] = GrowLayer()
    return cache


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
        cache = new_cache(self.config, self.types)
        for i, (layer, kind) in enumerate(zip(self.cache.layers, self.types, strict=True)):
            keys, values = layer.keys, layer.values
            if kind == FULL:  # a GrowLayer copies into its own buffer
                device_index = index.to(keys.device)
                keys, values = keys[:, :, device_index], values[:, :, device_index]
            else:
                keys, values = keys.clone(), values.clone()
            cache.update(keys, values, i)
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
    cache = new_cache(state.config, state.types)
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
    state = KVState(new_cache(model.config, types), types, positions, 0, window, model.config)
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


class RowBatch:
    """Several pruned caches decoded as rows of one batch.

    Each row's entries are copied left-aligned into shared ``GrowLayer`` buffers (sliding layers
    too: they keep every entry and the mask applies the window), padded to the longest row.
    ``pos[kind]`` ``(rows, entries)`` holds each entry's position and ``valid[kind]`` whether it
    is a real entry of that row (False on padding and on padded query slots), so every row sees
    exactly what its own ``KVState`` would: same entries, same positions, same window.
    """

    def __init__(self, model: PreTrainedModel, states: Iterable[KVState], rows: int, width: dict):
        self.model, self.rows = model, rows
        self.types = layer_types(model)
        self.window = None
        self.cache = new_cache(model.config, self.types, grow_sliding=True)
        self.pos = {kind: torch.zeros(rows, n, dtype=torch.long) for kind, n in width.items()}
        self.valid = {kind: torch.zeros(rows, n, dtype=torch.bool) for kind, n in width.items()}
        self.next = torch.zeros(rows, dtype=torch.long)
        for r, state in enumerate(states):
            self.window = state.window
            for i, (layer, kind) in enumerate(zip(state.cache.layers, self.types, strict=True)):
                target = self.cache.layers[i]
                if target._k is None:  # allocate (rows, heads, width, dim) once
                    k, v = layer.keys, layer.values
                    target.update(
                        k.new_zeros(rows, k.shape[1], width[kind], k.shape[3]),
                        v.new_zeros(rows, v.shape[1], width[kind], v.shape[3]),
                    )
                n = layer.keys.shape[2]
                target._k[r, :, :n], target._v[r, :, :n] = layer.keys[0], layer.values[0]
            for kind, positions in state.positions.items():
                self.pos[kind][r, : len(positions)] = positions
                self.valid[kind][r, : len(positions)] = True
            self.next[r] = state.next_position

    @torch.inference_mode()
    def forward(self, ids: list[list[int]]) -> torch.Tensor:
        """Append each row's ``ids`` (rows may differ in length: right-padded, the padding
        hidden from every later query) and return the logits of each row's last id,
        ``(rows, vocab)`` float32."""
        counts = torch.tensor([len(row) for row in ids])
        width = int(counts.max())
        tokens = torch.tensor([row + [0] * (width - len(row)) for row in ids])
        query = self.next[:, None] + torch.arange(width)[None]
        query_valid = torch.arange(width)[None] < counts[:, None]
        masks = {}
        for kind in self.pos:
            self.pos[kind] = torch.cat([self.pos[kind], query], 1)
            self.valid[kind] = torch.cat([self.valid[kind], query_valid], 1)
            keys = self.pos[kind][:, None, :]
            visible = self.valid[kind][:, None, :] & (keys <= query[:, :, None])
            if kind == SLIDING and self.window is not None:
                visible &= keys > query[:, :, None] - self.window
            masks[kind] = visible[:, None].to(self.model.device)
        self.next += counts
        return self._forward_rows(tokens, masks, query, counts - 1)

    def _forward_rows(
        self,
        tokens: torch.Tensor,
        masks: dict[str, torch.Tensor],
        query: torch.Tensor,
        last: torch.Tensor,
    ) -> torch.Tensor:
        """One forward of ``tokens`` ``(rows, width)`` at positions ``query`` ``(rows, width)``
        through the cache, under one ``(rows, 1, width, keys)`` mask per layer type; returns
        the float logits ``(rows, vocab)`` at each row's column ``last[r]``."""
        mask: torch.Tensor | dict = masks if len(masks) > 1 else next(iter(masks.values()))
        output = self.model(
            input_ids=tokens.to(self.model.device),
            attention_mask=mask,
            position_ids=query.to(self.model.device),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=tokens.shape[1],
        )
        last = last.to(output.logits.device)
        return output.logits[torch.arange(len(last), device=last.device), last].float()

    def keep_rows(self, rows: list[int]) -> None:
        """Drop every other row (finished answers leave the batch)."""
        index = torch.tensor(rows, dtype=torch.long)
        for layer in self.cache.layers:
            layer.select_rows(index)
        self.pos = {kind: p[index] for kind, p in self.pos.items()}
        self.valid = {kind: v[index] for kind, v in self.valid.items()}
        self.next = self.next[index]


@torch.inference_mode()
def decode_greedy_rows(
    model: PreTrainedModel,
    states: Iterable[KVState],
    lengths: dict[str, list[int]],
    cues: Sequence[list[int]],
    max_new_tokens: int,
    rule: StopRule,
) -> list[Continuation]:
    """``decode_greedy`` of every (state, cue) pair as rows of one batch; each row stops at
    its own end (``rule``) and leaves the batch. ``lengths[kind][r]`` is row r's entries of
    that layer type (the states may be a generator: each is copied in and dropped)."""
    width = {kind: max(n) for kind, n in lengths.items()}
    return decode_batch_rows(RowBatch(model, states, len(cues), width), cues, max_new_tokens, rule)


@torch.inference_mode()
def decode_batch_rows(
    batch: RowBatch, cues: Sequence[list[int]], max_new_tokens: int, rule: StopRule
) -> list[Continuation]:
    """Greedy decoding of every row of a filled ``batch`` (a ``RowBatch`` or a subclass)
    after its own cue; each row stops at its own end (``rule``) and leaves the batch."""
    rows = len(cues)
    if max_new_tokens < 1:
        return [Continuation([], LENGTH) for _ in range(rows)]
    logits = batch.forward([list(c) for c in cues])
    live, ids = list(range(rows)), [[] for _ in range(rows)]
    done: list[Continuation | None] = [None] * rows
    for step in range(max_new_tokens):
        tokens = logits.argmax(-1).tolist()
        still = []
        for slot, (r, token) in enumerate(zip(live, tokens, strict=True)):
            ids[r].append(token)
            stop = rule.stop(ids[r])
            if stop is not None:
                done[r] = Continuation(ids[r], stop)
            elif step + 1 == max_new_tokens:
                done[r] = Continuation(ids[r], LENGTH)
            else:
                still.append(slot)
        if not still:
            break
        if len(still) < len(live):
            batch.keep_rows(still)
            live = [live[s] for s in still]
        logits = batch.forward([[ids[r][-1]] for r in live])
    return [d if d is not None else Continuation([], LENGTH) for d in done]
