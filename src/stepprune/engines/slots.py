"""Continuous batching for the hf engine: a finished row's slot takes the next prompt at once.

``generate`` on a static batch runs until its longest row ends, and the next batch waits. Here
each of ``slots`` rows holds one sequence in a per-row, left-aligned cache (``SlotLayer``: row r
fills columns ``0..fill[r]-1``); one forward decodes one token for every live row, and when a
row ends (end-of-sequence or budget) its slot is refilled with the next prompt, prefilled on
its own and copied into the row. Positions are each row's own token count, and an explicit mask
hides every column at or past a row's fill (and, on sliding-window layers, columns that left
its window), so a row sees exactly its own sequence, as in a left-padded ``generate``.

Every sequence draws from its own ``RowSampler`` (seeded per sequence), once per token, so its
tokens depend on its seed and prompt only, not on which sequences share the batch or when its
slot opened: the same traces as ``generate`` with ``SeededSampling``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from stepprune.decoding import RowSampler, SamplingConfig, sampling_probs
from stepprune.kvcache import GROW_CHUNK, SLIDING, GrowLayer, layer_types, new_cache


class SlotLayer(GrowLayer):
    """A cache layer whose rows fill independently: ``(slots, kv_heads, capacity, head_dim)``
    buffers, row r's entries in columns ``0..fill[r]-1``; ``keys`` / ``values`` are the first
    ``width`` columns (the longest row; shorter rows' extra columns are masked)."""

    def __init__(self, fill: torch.Tensor) -> None:
        super().__init__()
        self.fill = fill  # shared with the batch: (slots,) long, updated in place
        # Columns after this step's write (max fill + 1), set by the batch once per step so
        # that no layer reads ``fill`` back from the device.
        self.width = 0

    def _ensure(self, like: torch.Tensor, rows: int, need: int) -> None:
        if self._k is not None and need <= self._k.shape[-2]:
            return
        size = need + max(GROW_CHUNK, need // 4)
        shape = (rows, like.shape[1], size, like.shape[3])
        grown_k, grown_v = like.new_zeros(shape), like.new_zeros(shape)
        if self._k is not None:
            grown_k[:, :, : self._n] = self._k[:, :, : self._n]
            grown_v[:, :, : self._n] = self._v[:, :, : self._n]
        self._k, self._v = grown_k, grown_v

    def put(self, row: int, rows: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write a prefilled sequence, ``(1, kv_heads, n, head_dim)``, into row ``row``."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        n = keys.shape[-2]
        self._ensure(keys, rows, n)
        self._k[row, :, :n], self._v[row, :, :n] = keys[0], values[0]
        self._n = max(self._n, n)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append one token per row (``(slots, kv_heads, 1, head_dim)``) at column ``fill[r]``."""
        need = self.width
        self._ensure(key_states, key_states.shape[0], need)
        rows = torch.arange(key_states.shape[0], device=key_states.device)
        self._k[rows, :, self.fill] = key_states[:, :, 0]
        self._v[rows, :, self.fill] = value_states[:, :, 0]
        self._n = need  # columns past every row's fill hold nothing live (rows that left)
        return self.keys, self.values


class SlotBatch:
    """Up to ``slots`` sequences decoded together (see the module docstring)."""

    def __init__(self, model: PreTrainedModel, slots: int) -> None:
        self.model, self.slots = model, slots
        self.types = layer_types(model)
        self.window = getattr(model.config, "sliding_window", None)
        self.fill = torch.zeros(slots, dtype=torch.long, device=model.device)
        self.cache = DynamicCache(config=model.config)
        self.cache.layers = [SlotLayer(self.fill) for _ in self.types]

    def _model(self, ids: torch.Tensor, masks: dict, positions: torch.Tensor, cache, keep: int):
        mask = masks if len(masks) > 1 else next(iter(masks.values()))
        with torch.inference_mode():
            return (
                self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=keep,
                )
                .logits[:, -1]
                .float()
            )

    def _masks(self, query: torch.Tensor, keys: torch.Tensor) -> dict[str, torch.Tensor]:
        """``query``: ``(rows, q)`` positions; ``keys``: ``(rows, k)`` column positions (column c
        holds position c); bool ``(rows, 1, q, k)`` per layer type."""
        visible = keys[:, None, :] <= query[:, :, None]
        masks = {}
        for kind in dict.fromkeys(self.types):
            seen = visible
            if kind == SLIDING and self.window is not None:
                seen = visible & (keys[:, None, :] > query[:, :, None] - self.window)
            masks[kind] = seen[:, None]
        return masks

    def prefill(self, row: int, ids: list[int]) -> torch.Tensor:
        """Put ``ids`` into slot ``row``; returns the logits after its last id, ``(vocab,)``."""
        device = self.model.device
        cache = new_cache(self.model.config, self.types, grow_sliding=True)
        positions = torch.arange(len(ids), device=device)[None]
        logits = self._model(
            torch.tensor([ids], device=device),
            self._masks(positions, positions),
            positions,
            cache,
            1,
        )
        for target, layer in zip(self.cache.layers, cache.layers, strict=True):
            target.put(row, self.slots, layer.keys, layer.values)
        self.fill[row] = len(ids)
        return logits[0]

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Decode one token per slot; returns each slot's next logits, ``(slots, vocab)``."""
        device = self.model.device
        width = int(self.fill.max()) + 1
        for layer in self.cache.layers:
            layer.width = width
        columns = torch.arange(width, device=device)[None].expand(self.slots, width)
        query = self.fill[:, None].clone()
        masks = self._masks(query, columns)  # column fill[r] is the token written now
        ids = torch.tensor(tokens, device=device)[:, None]
        logits = self._model(ids, masks, query, self.cache, 1)
        self.fill += 1
        return logits

    def keep_rows(self, rows: list[int]) -> None:
        """Drop every other slot (no prompt is left to refill them)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.model.device)
        for layer in self.cache.layers:
            layer.select_rows(index)
        fill = self.fill[index]
        self.fill = fill
        for layer in self.cache.layers:
            layer.fill = fill
        self.slots = len(rows)


def sample_slots(
    model: PreTrainedModel,
    prompts: Sequence[list[int]],
    seeds: Sequence[int],
    sampling: SamplingConfig,
    eos_ids: Sequence[int],
    slots: int,
) -> list[list[int]]:
    """Sample a continuation of every prompt, ``slots`` at a time, each finished slot refilled
    with the next prompt; each ends at its first id in ``eos_ids`` (kept) or after
    ``sampling.max_new_tokens`` ids. Returns the generated ids of each prompt, in order."""
    queue = deque(range(len(prompts)))
    out: list[list[int]] = [[] for _ in prompts]
    batch = SlotBatch(model, min(slots, len(prompts)))
    units: list[int] = []  # slot -> prompt index
    samplers: list[RowSampler] = []
    eos = set(eos_ids)

    def draw(logits: torch.Tensor, sampler: RowSampler) -> int:
        probs = sampling_probs(logits[None], sampling.temperature, sampling.top_p)
        return int(sampler.draw(probs[0]))

    def done(unit: int) -> bool:
        ids = out[unit]
        return ids[-1] in eos or len(ids) >= sampling.max_new_tokens

    def fill(slot: int) -> bool:
        """Start prompts in ``slot`` until one needs more tokens; False when none is left."""
        while queue:
            unit = queue.popleft()
            sampler = RowSampler(seeds[unit], sampling)
            out[unit].append(draw(batch.prefill(slot, prompts[unit]), sampler))
            if not done(unit):
                if slot < len(units):
                    units[slot], samplers[slot] = unit, sampler
                else:
                    units.append(unit)
                    samplers.append(sampler)
                return True
        return False

    for slot in range(batch.slots):
        if not fill(slot):
            break
    if len(units) < batch.slots:
        batch.keep_rows(list(range(len(units))))
    while units:
        logits = batch.step([out[u][-1] for u in units])
        probs = sampling_probs(logits, sampling.temperature, sampling.top_p)
        live = []
        for slot, (unit, sampler) in enumerate(zip(units, samplers, strict=True)):
            out[unit].append(int(sampler.draw(probs[slot])))
            if not done(unit) or fill(slot):
                live.append(slot)
        if len(live) < len(units):
            batch.keep_rows(live)
            units[:] = [units[s] for s in live]
            samplers[:] = [samplers[s] for s in live]
    return out


__all__ = ["SlotBatch", "SlotLayer", "sample_slots"]
