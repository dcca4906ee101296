"""Keep masks of several traces as rows of one batch: the answers each row gets alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from stepprune import kvunits
from stepprune.cli import app
from stepprune.kvcache import POSITION_SCHEMES, decode_greedy, prefill
from stepprune.kvunits import (
    UnitRows,
    budget_entries,
    decode_units,
    entry_bytes,
    free_mib,
    pack,
)
from tests.test_kvbatch import ModuloStop
from tests.test_kvcache import ARCHS, _model

# Traces of different lengths: longer and shorter than the sliding window (8) of qwen2-sliding.
LENGTHS = [30, 19, 5]
# Per trace: evicted positions of each row (the first row keeps everything).
EVICTIONS = [
    [[], [3, 4, 10, 11, 20], list(range(5, 18))],
    [[], [1, 2, 15, 16]],
    [[], [2], [0, 3]],
]


def _units() -> list[UnitRows]:
    generator = torch.Generator().manual_seed(1)
    units = []
    for n, evictions in zip(LENGTHS, EVICTIONS, strict=True):
        ids = torch.randint(1, 200, (n,), generator=generator).tolist()
        entries = []
        for evict in evictions:
            keep = torch.ones(n, dtype=torch.bool)
            keep[evict] = False
            entries.append(keep)
        cues = [[5 + r, 6] if r % 2 else [9] for r in range(len(evictions))]
        units.append(UnitRows(ids, entries, cues))
    return units


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("scheme", ["original", "rerotate"])
def test_rows_of_several_traces_decode_what_each_decodes_alone(name: str, scheme: str) -> None:
    model, units = _model(name), _units()
    place, rule = POSITION_SCHEMES[scheme], ModuloStop(7)
    alone = []
    for unit in units:
        full, _ = prefill(model, unit.ids)
        alone.append(
            [
                decode_greedy(model, place(full.gather(keep), model), cue, 10, rule)
                for keep, cue in zip(unit.entries, unit.cues, strict=True)
            ]
        )
    together = decode_units(model, units, place, 10, rule)
    assert together == alone
    assert len({len(c.ids) for row in alone for c in row}) > 1  # rows left at different steps


def _unit(rows: int, length: int) -> UnitRows:
    return UnitRows(
        list(range(length)), [torch.ones(length, dtype=torch.bool)] * rows, [[1]] * rows
    )


def test_pack_keeps_each_padded_batch_within_the_budget() -> None:
    units = [_unit(2, 10), _unit(3, 5), _unit(2, 20), _unit(1, 100), _unit(2, 4)]
    answer = 5  # widths (kept + cue + answer): 16, 11, 26, 106, 10
    # rows x widest: [0,1] 5 x 16 = 80; + unit 2: 7 x 26 = 182 > 100; unit 3 alone exceeds it.
    assert pack(units, 100, answer) == [[0, 1], [2], [3], [4]]
    assert pack(units, 10_000, answer) == [[0, 1, 2, 3, 4]]
    assert pack(units, 1, answer) == [[0], [1], [2], [3], [4]]


def test_budget_counts_keys_and_values_of_every_layer() -> None:
    model = _model("qwen2")
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    per_entry = config.num_hidden_layers * config.num_key_value_heads * head_dim * 2 * 4
    assert entry_bytes(config, torch.float32) == per_entry
    assert entry_bytes(config, torch.bfloat16) == per_entry // 2
    assert budget_entries(config, torch.float32, 1) == (1 << 20) // per_entry


def test_a_budget_beyond_the_devices_free_memory_is_capped_at_half_of_it(monkeypatch) -> None:
    total_mib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    assert 0 < free_mib(torch.device("cpu")) <= total_mib
    monkeypatch.setattr(kvunits, "free_mib", lambda device: 1000)  # free memory moves
    config = _model("qwen2").config
    per_entry = entry_bytes(config, torch.float32)
    cpu = torch.device("cpu")
    assert budget_entries(config, torch.float32, 8192, cpu) == (500 << 20) // per_entry
    assert budget_entries(config, torch.float32, 8192) == (8192 << 20) // per_entry  # no device
    assert budget_entries(config, torch.float32, 100, cpu) == (100 << 20) // per_entry


def _records(out: Path) -> list[dict]:
    lines = (out / "records.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda r: json.dumps(r))


@pytest.mark.e2e
def test_kv_records_do_not_depend_on_how_traces_share_batches(
    tiny_r1_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """One trace per batch (a budget of one entry) and every trace in one batch give the same
    records; the second run did decode several traces in one call."""
    import stepprune.modes.kv as kv_mode

    calls: list[int] = []
    decode = kv_mode.decode_units

    def counted(model, units, *args):
        calls.append(len(units))
        return decode(model, units, *args)

    monkeypatch.setattr(kv_mode, "decode_units", counted)
    records = []
    for budget in (1, 1 << 30):
        monkeypatch.setattr(kv_mode, "budget_entries", lambda *a, b=budget: b)
        out = tmp_path / f"run-{budget}"
        args = [
            "run", "--model", str(tiny_r1_dir), "--device", "cpu", "--limit", "3",
            "--thresholds", "0,0.3,0.6", "--answer-max-tokens", "6", "--out", str(out),
            "--mode", "kv",
        ]  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        records.append(_records(out))
    assert calls == [1, 1, 1, 3]
    assert records[0] == records[1] and len(records[0]) == 9
