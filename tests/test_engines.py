"""The hf engine: per-sequence seeded sampling (batch-invariant, no top-k) and greedy answers
that stop at a complete box; the shared decoding rules."""

from __future__ import annotations

import pytest
import torch

from stepprune.decoding import (
    BOX,
    EOS,
    LENGTH,
    Continuation,
    RowSampler,
    SamplingConfig,
    StopRule,
    has_closed_box,
    sampling_probs,
)
from stepprune.engines import ENGINES, HFEngine
from tests.conftest import tiny_model

EOS_ID = 151643
SAMPLING = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.95)


@pytest.fixture(scope="module")
def engine(r1_tokenizer) -> HFEngine:
    return HFEngine(tiny_model("qwen2"), r1_tokenizer, [EOS_ID], EOS_ID, batch_size=3)


def test_the_hf_spec_opens_an_engine_on_the_model_it_is_shown(r1_tokenizer) -> None:
    from stepprune.engines import ModelView

    config = ENGINES.build("hf:batch=3")
    assert config.location == "worker" and config.spec == "hf:batch=3"
    view = ModelView(r1_tokenizer, [EOS_ID], EOS_ID, "float32", "", model=tiny_model("qwen2"))
    opened = config.open(view, seed=0)
    assert isinstance(opened, HFEngine) and opened.batch_size == 3
    with pytest.raises(ValueError, match="where the model is loaded"):
        config.open(ModelView(r1_tokenizer, [EOS_ID], EOS_ID, "float32", ""), seed=0)


@pytest.mark.slow
def test_sampling_is_seeded_per_sequence_whatever_the_batch(engine: HFEngine) -> None:
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10]]
    together = engine.sample(prompts, [11, 12, 13], SAMPLING)
    alone = [
        engine.sample([p], [s], SAMPLING)[0] for p, s in zip(prompts, [11, 12, 13], strict=True)
    ]
    assert [c.ids for c in together] == [c.ids for c in alone]
    # Another batch composition (a different neighbour, in another row) changes nothing either.
    mixed = engine.sample([[20, 21], prompts[1]], [99, 12], SAMPLING)
    assert mixed[1].ids == together[1].ids
    other_seed = engine.sample([prompts[1]], [14], SAMPLING)[0]
    assert other_seed.ids != together[1].ids
    assert all(c.stop == LENGTH and len(c.ids) == 10 for c in together)


@pytest.mark.slow
def test_sampling_applies_no_top_k(engine: HFEngine) -> None:
    # Temperature 1, top-p 1: every token keeps its probability. With the tiny model's nearly
    # uniform logits over 151936 tokens, 64 draws land outside the top 50 almost surely; a
    # top-k of 50 (generate's default) would keep every draw inside it.
    prompt = [1, 2, 3]
    logits = engine.model(torch.tensor([prompt])).logits[0, -1]
    top50 = set(torch.topk(logits, 50).indices.tolist())
    wide = SamplingConfig(max_new_tokens=1, temperature=1.0, top_p=1.0)
    draws = engine.sample([prompt] * 64, list(range(64)), wide)
    assert any(c.ids[0] not in top50 for c in draws)


def test_sampling_probs_nucleus_and_greedy() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = sampling_probs(logits, temperature=1.0, top_p=0.8)
    assert torch.allclose(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert sampling_probs(logits, 0.0, 0.8).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    many = torch.zeros(1, 1000)
    assert int((sampling_probs(many, 1.0, 0.999) > 0).sum()) > 50  # no hidden top-k


def test_row_sampler_is_reproducible() -> None:
    logits = torch.randn(100)
    first = [RowSampler(3, SAMPLING)(logits) for _ in range(5)]
    sampler = RowSampler(3, SAMPLING)
    assert first == [sampler(logits)] + [RowSampler(3, SAMPLING)(logits) for _ in range(4)]


def test_stop_rule_eos_box_length(r1_tokenizer) -> None:
    rule = StopRule(r1_tokenizer, [EOS_ID], box_prefix="The answer is \\boxed{")
    ids = r1_tokenizer.encode("34}. More text", add_special_tokens=False)
    finished = rule.finish(ids)
    assert finished.stop == BOX and r1_tokenizer.decode(finished.ids).startswith("34}")
    assert "More" not in r1_tokenizer.decode(finished.ids)
    assert rule.finish([5, 6, EOS_ID, 7]) == Continuation([5, 6, EOS_ID], EOS)
    assert rule.finish([5, 6]).stop == LENGTH
    assert Continuation([5, 6, EOS_ID], EOS).content_ids == [5, 6]
    assert not has_closed_box("\\boxed{3") and has_closed_box("x \\boxed{\\frac{1}{2}} y")


def test_greedy_is_deterministic_and_respects_the_budget(engine: HFEngine) -> None:
    contexts = [[1, 2, 3], [4, 5]]
    first = engine.greedy(contexts, 6, box_prefix=None)
    again = engine.greedy(list(reversed(contexts)), 6, box_prefix=None)
    assert [c.ids for c in first] == [c.ids for c in reversed(again)]
    assert all(len(c.content_ids) <= 6 for c in first)
