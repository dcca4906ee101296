"""Continuous batching in the hf engine: the traces of static ``generate`` batches, in fewer
forwards."""

from __future__ import annotations

import pytest
import torch

from stepprune.decoding import RowSampler, SamplingConfig
from stepprune.engines import HFEngine
from stepprune.engines.hf import SeededSampling
from tests.conftest import tiny_model

# Ids 0..5 end a sequence: with a tiny random model over 64 ids, rows end at different steps.
EOS = [0, 1, 2, 3, 4, 5]
SAMPLING = SamplingConfig(max_new_tokens=24, temperature=1.0, top_p=0.95)
ARCHS = {
    "qwen2": {},
    "llama": {},
    "qwen2-sliding": {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1},
}


class Counter:
    """Calls of the model's forward."""

    def __init__(self, model) -> None:
        self.calls = 0
        model.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))


def _engine(name: str, batch: int) -> HFEngine:
    arch = name.split("-")[0]
    model = tiny_model(arch, vocab_size=64, eos_token_id=0, **ARCHS[name])
    return HFEngine(model, tokenizer=None, eos_ids=EOS, pad_id=0, batch_size=batch)


def _prompts(count: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(3)
    lengths = torch.randint(2, 12, (count,), generator=generator).tolist()
    return [torch.randint(6, 64, (n,), generator=generator).tolist() for n in lengths]


def _static(engine: HFEngine, prompts, seeds) -> list[list[int]]:
    """Today's static batches: ``generate`` with seeded per-row sampling, cut at the first end
    id (what ``StopRule.finish`` keeps, the end id included)."""
    out = []
    for rows in engine._batches(prompts):
        samplers = [RowSampler(seeds[i], SAMPLING) for i in rows]
        generated = engine._generate(
            [prompts[i] for i in rows],
            SAMPLING.max_new_tokens,
            [SeededSampling(samplers, SAMPLING)],
            [],
        )
        for ids in generated:
            end = next((k for k, t in enumerate(ids) if t in EOS), len(ids) - 1)
            out.append(ids[: end + 1])
    return out


@pytest.mark.parametrize("name", list(ARCHS))
def test_refilled_slots_sample_the_traces_of_static_batches_in_fewer_forwards(name: str) -> None:
    engine = _engine(name, batch=4)
    prompts, seeds = _prompts(16), list(range(100, 116))
    counter = Counter(engine.model)
    static = _static(engine, prompts, seeds)
    static_forwards, counter.calls = counter.calls, 0
    continuous = [c.ids for c in engine.sample(prompts, seeds, SAMPLING)]
    assert continuous == static
    lengths = {len(ids) for ids in static}
    assert len(lengths) > 3 and max(lengths) == SAMPLING.max_new_tokens  # mixed lengths
    assert counter.calls < static_forwards


def test_a_trace_does_not_depend_on_its_slot_or_neighbours() -> None:
    engine = _engine("qwen2", batch=3)
    prompts, seeds = _prompts(7), list(range(7))
    together = engine.sample(prompts, seeds, SAMPLING)
    alone = engine.sample(prompts[5:6], seeds[5:6], SAMPLING)[0]
    assert together[5].ids == alone.ids
    other = engine.sample(prompts[5:6], [99], SAMPLING)[0]
    assert other.ids != alone.ids
