"""The cache of batched online generation: several pruned caches as rows of one padded batch.

``OnlineRows`` is a ``kvcache.RowBatch`` whose rows also change the way one online generation's
``KVState`` does, without moving any entry:

- an eviction clears the evicted entries' validity bits of that row (full-attention layers);
- a probe (``Scorer.score_cache``'s "Time is up" tokens, forwarded and dropped again) is
  forwarded like any input, then its slots are marked invalid and the row's next position is
  moved back, as ``KVState.restore`` does;
- when every row carries holes (evicted entries, probe slots, padding), ``compact`` copies each
  row's valid entries left-aligned into narrower buffers.

Masks hide invalid entries (their softmax weight is exactly 0), so each row sees the entries,
positions and windows its own ``KVState`` would hold. ``RowsCapture`` records the probe's
attention of several rows during one batched forward, per row and per step bucket, as
``scorers.attention.cached_probe_mass`` does for one ``KVState``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from stepprune.capture import AttentionCapture
from stepprune.kvcache import FULL, GROW_CHUNK, SLIDING, KVState, RowBatch
from stepprune.schema import Step


class OnlineRows(RowBatch):
    """Rows of online generations in one batch (see the module docstring).

    ``pos[kind]`` / ``valid[kind]``: ``(rows, width)`` as in ``RowBatch``; ``next``: ``(rows,)``.
    Rows are never dropped (a finished row's inputs are empty), so row indices stay fixed.
    """

    def __init__(self, model: PreTrainedModel, states: Sequence[KVState]) -> None:
        kinds = states[0].positions
        width = {kind: max(len(s.positions[kind]) for s in states) for kind in kinds}
        super().__init__(model, states, len(states), width)

    def length(self, row: int) -> int:
        """Full-attention entries that ``row`` holds (``KVState.length``)."""
        return int(self.valid[FULL][row].sum()) if FULL in self.valid else 0

    @torch.inference_mode()
    def step(self, ids: Sequence[list[int]], dropped: Sequence[int]) -> torch.Tensor:
        """Forward each row's ``ids`` (empty for rows with nothing to do), as
        ``RowBatch.forward`` does; then the last ``dropped[r]`` of row r's ids leave its cache
        again (a probe appended after its token: ``KVState.restore``).

        Returns:
            ``(rows, vocab)`` float32 logits of each row's last id that stays (rows without
            ids: junk).
        """
        counts = torch.tensor([len(row) for row in ids])
        width = int(counts.max())
        tokens = torch.tensor([row + [0] * (width - len(row)) for row in ids])
        query = self.next[:, None] + torch.arange(width)[None]
        stays = counts - torch.tensor(list(dropped))
        masks = {}
        for kind in self.pos:
            self.pos[kind] = torch.cat([self.pos[kind], query], 1)
            self.valid[kind] = torch.cat(
                [self.valid[kind], torch.arange(width) < counts[:, None]], 1
            )
            keys = self.pos[kind][:, None, :]
            visible = self.valid[kind][:, None, :] & (keys <= query[:, :, None])
            if kind == SLIDING and self.window is not None:
                visible &= keys > query[:, :, None] - self.window
            masks[kind] = visible[:, None].to(self.model.device)
            # The dropped ids were seen by the queries after them (the probe reads itself);
            # no later forward sees them.
            self.valid[kind][:, -width:] &= torch.arange(width) < stays[:, None]
        self.next += stays
        return self._forward_rows(tokens, masks, query, (stays - 1).clamp_min(0))

    def evict(self, row: int, steps: Sequence[Step]) -> None:
        """Drop the full-attention entries of ``steps`` from ``row`` (``KVState.gather``)."""
        positions = self.pos[FULL][row]
        gone = torch.zeros_like(positions, dtype=torch.bool)
        for step in steps:
            gone |= (positions >= step.start) & (positions < step.end)
        self.valid[FULL][row] &= ~gone

    def wasted(self) -> bool:
        """Whether every row leaves at least a quarter of the buffers (and a growth chunk)
        unused: the moment a ``compact`` pays for its copy. Sliding-window entries that no
        query can see again (outside the window of the next position: positions only grow)
        count as unused: they are marked invalid here."""
        if SLIDING in self.valid and self.window is not None:
            self.valid[SLIDING] &= self.pos[SLIDING] > (self.next[:, None] - self.window)
        return any(
            valid.shape[1] - int(valid.sum(1).max()) >= max(GROW_CHUNK, valid.shape[1] // 4)
            for valid in self.valid.values()
        )

    def compact(self) -> None:
        """Copy every row's valid entries left-aligned into buffers as wide as the fullest
        row."""
        for kind in list(self.valid):
            valid = self.valid[kind]
            counts = valid.sum(1)
            width = int(counts.max())
            # A stable sort of "invalid" puts each row's valid entries first, in order.
            order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices[:, :width]
            self.pos[kind] = self.pos[kind].gather(1, order)
            self.valid[kind] = torch.arange(width)[None] < counts[:, None]
            for layer, layer_kind in zip(self.cache.layers, self.types, strict=True):
                if layer_kind != kind:
                    continue
                keys, values = layer.keys, layer.values
                index = order.to(keys.device)[:, None, :, None]
                layer.keys = keys.gather(2, index.expand(-1, keys.shape[1], -1, keys.shape[3]))
                layer.values = values.gather(
                    2, index.expand(-1, values.shape[1], -1, values.shape[3])
                )

    def buckets(self, row: int, steps: Sequence[Step], extra: int) -> torch.Tensor:
        """Each full-attention key's step for ``row``'s next forward of ``extra`` slots:
        ``(width + extra,)`` long, an index into ``steps``, ``len(steps)`` for everything else
        (prompt, separators, recent tokens, invalid entries, the probe). The new slots go by
        their positions too: a row's new token can sit in a step when ``recent`` is 0."""
        positions = torch.cat([self.pos[FULL][row], self.next[row] + torch.arange(extra)])
        valid = torch.cat([self.valid[FULL][row], torch.ones(extra, dtype=torch.bool)])
        buckets = torch.full((len(positions),), len(steps), dtype=torch.long)
        for i, step in enumerate(steps):
            buckets[valid & (positions >= step.start) & (positions < step.end)] = i
        return buckets


class RowsCapture:
    """Probe attention of several rows in one batched forward: ``rows[r]`` is an
    ``AttentionCapture`` of row r's probe queries (slots ``0..len(probe)-1``) summed per step
    bucket; after the forward, ``rows[r].stacked()`` is ``(full-attention layers, heads,
    len(probe), buckets)`` float32, as ``cached_probe_mass`` captures for one ``KVState``.
    Use with ``capture.recording``."""

    def __init__(self, layers: Sequence[int]) -> None:
        self.layers = frozenset(layers)
        self.rows: dict[int, AttentionCapture] = {}

    def add(
        self, row: int, queries: Sequence[int], buckets: torch.Tensor, num_buckets: int
    ) -> None:
        """Record row ``row``'s query slots ``queries`` of the next forward."""
        self.rows[row] = AttentionCapture(
            list(queries),
            key_buckets=buckets,
            num_buckets=num_buckets,
            layers=self.layers,
        )

    def record(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
    ) -> None:
        """``query``: ``(rows, heads, q, dim)``; ``key``: ``(rows, kv_heads, k, dim)``;
        ``attention_mask``: ``(rows, 1, q, k)``. Each captured row records its own slice."""
        for row, capture in self.rows.items():
            mask = None if attention_mask is None else attention_mask[row : row + 1]
            capture.record(module, query[row : row + 1], key[row : row + 1], mask, scaling)
