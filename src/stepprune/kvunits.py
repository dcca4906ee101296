"""Keep masks of several traces decoded as rows of one batch, within a memory budget.

kv mode answers every keep mask of a trace from a pruned copy of that trace's cache. Rows of one
``kvcache.RowBatch`` each carry their own entries, positions and validity mask, so rows from
different traces can share a batch as well as rows of one trace: a batch then costs one decode
step per answer token for all of its traces instead of one per trace.

``pack`` groups consecutive traces so that each batch's padded cache (rows x longest row,
answers included) stays within a budget; ``decode_units`` prefills each trace of a group, copies
its pruned rows into the batch as it goes (one full cache alive at a time), and decodes all the
rows with ``kvcache.decode_greedy_rows``. Each row's answer is the one it gets alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedConfig, PreTrainedModel

from stepprune.decoding import Continuation, StopRule
from stepprune.kvcache import FULL, SLIDING, KVState, decode_greedy_rows, layer_types, prefill

#: Default budget of one batch's cache (keys and values of every row, padding included); a
#: run caps it at half of the memory free on the model's device.
DEFAULT_BATCH_MIB = 8192

Place = Callable[[KVState, PreTrainedModel], KVState]


def entry_bytes(config: PreTrainedConfig, dtype: torch.dtype) -> int:
    """Bytes one cached position of one row takes: keys and values of every layer."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers * kv_heads * head_dim * 2 * torch.finfo(dtype).bits // 8


def budget_entries(
    config: PreTrainedConfig,
    dtype: torch.dtype,
    batch_mib: int,
    device: torch.device | None = None,
) -> int:
    """Row positions (summed over a batch's rows) that ``batch_mib`` MiB of cache hold.

    With ``device``, the budget is also capped at half of the memory free on it now, so that a
    default sized for a large GPU never asks a small one (or a CPU machine) for more than it has.
    """
    if device is not None:
        batch_mib = min(batch_mib, max(1, free_mib(device) // 2))
    return (batch_mib << 20) // max(1, entry_bytes(config, dtype))


def free_mib(device: torch.device) -> int:
    """MiB free on ``device``: the CUDA device's free memory, else the system's available
    memory (``MemAvailable``, which counts reclaimable caches)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] >> 20
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) >> 10  # kB
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20


@dataclass
class UnitRows:
    """One trace's rows: the ids whose cache is pruned, and per row its kept entries and cue.

    ``entries[r]`` is ``(len(ids),)`` bool (True: row r keeps that position's entry) and
    ``cues[r]`` the ids appended before row r's answer.
    """

    ids: list[int]
    entries: list[torch.Tensor]
    cues: list[list[int]]

    def width(self, answer_tokens: int) -> int:
        """The longest row's positions once its cue and answer are in."""
        return max(
            int(e.sum()) + len(c) + answer_tokens
            for e, c in zip(self.entries, self.cues, strict=True)
        )


def pack(units: Sequence[UnitRows], capacity: int, answer_tokens: int) -> list[list[int]]:
    """Consecutive groups of unit indices whose padded batch (rows x widest row) fits
    ``capacity`` positions; a unit that alone exceeds it is a group of its own."""
    groups: list[list[int]] = []
    rows = widest = 0
    for index, unit in enumerate(units):
        width = unit.width(answer_tokens)
        grown_rows, grown_widest = rows + len(unit.cues), max(widest, width)
        if groups and grown_rows * grown_widest <= capacity:
            groups[-1].append(index)
            rows, widest = grown_rows, grown_widest
        else:
            groups.append([index])
            rows, widest = len(unit.cues), width
    return groups


def _lengths(model: PreTrainedModel, units: Sequence[UnitRows]) -> dict[str, list[int]]:
    """Each row's entries per layer type, as ``decode_greedy_rows`` needs them up front: the
    kept positions on full-attention layers; on sliding ones what the prefill leaves (its last
    ``window - 1`` positions, whatever the row prunes)."""
    types = set(layer_types(model))
    window = getattr(model.config, "sliding_window", None)
    lengths: dict[str, list[int]] = {kind: [] for kind in (FULL, SLIDING) if kind in types}
    for unit in units:
        if FULL in lengths:
            lengths[FULL] += [int(e.sum()) for e in unit.entries]
        if SLIDING in lengths:
            kept = len(unit.ids) if window is None else min(window - 1, len(unit.ids))
            lengths[SLIDING] += [kept] * len(unit.entries)
    return lengths


def _rows(model: PreTrainedModel, units: Sequence[UnitRows], place: Place) -> Iterator[KVState]:
    """Every unit's pruned states in row order; a unit is prefilled when its first row is
    needed, so only one full cache is alive at a time."""
    for unit in units:
        full, _ = prefill(model, unit.ids)
        for keep in unit.entries:
            yield place(full.gather(keep), model)
        del full


def decode_units(
    model: PreTrainedModel,
    units: Sequence[UnitRows],
    place: Place,
    max_new_tokens: int,
    rule: StopRule,
) -> list[list[Continuation]]:
    """Greedy answers of every row of every unit, decoded as one batch (callers ``pack``
    first); ``result[u][r]`` is unit u's row r."""
    cues = [cue for unit in units for cue in unit.cues]
    lengths = _lengths(model, units)
    answers = decode_greedy_rows(
        model, _rows(model, units, place), lengths, cues, max_new_tokens, rule
    )
    result, offset = [], 0
    for unit in units:
        result.append(answers[offset : offset + len(unit.cues)])
        offset += len(unit.cues)
    return result
