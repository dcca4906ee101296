"""The attention scorer's query rows: ``reasoning_end`` (``</think>``, else the last reasoning
token) and ``probe`` read from the end-of-thinking token (``probe_tokens=last``) or from every
probe token (``probe_tokens=all``), each against eager attention rows."""

from __future__ import annotations

import pytest
import torch

from stepprune.schema import Step, Trace
from stepprune.scorers import SCORERS, AttentionScorer
from tests.conftest import eager_attentions, tiny_model

THINK_CLOSE = 90


class _Format:
    """The parts of ChatFormat the attention queries read."""

    def __init__(self, think_close_id: int | None) -> None:
        self.think_close_id = think_close_id

    def encode(self, text: str) -> list[int]:
        return [11, 12, 13, 14]

    def answer_cue_ids(self) -> list[int]:
        return [THINK_CLOSE, 15] if self.think_close_id is not None else [16, 17]


def _trace(thinking: bool) -> Trace:
    ids = [(7 * i) % 80 + 1 for i in range(40)]
    end = 34
    if thinking:
        ids[end] = THINK_CLOSE
    steps = [Step(0, 5, 12, ""), Step(1, 14, 20, ""), Step(2, 20, 33, "")]
    return Trace("p", 0, ids[:5], ids[5:], 5, end, True, True, True, False, steps)


def _from_rows(model, ids: list[int], rows: list[int], steps: list[Step]) -> list[float]:
    """Mean over layers, heads and the given query rows; summed per step; normalised."""
    attentions = eager_attentions(model, ids)
    per_layer = [a[0][:, rows, :].mean(0).mean(0) for a in attentions]
    row = torch.stack(per_layer).mean(0)
    raw = torch.stack([row[s.start : s.end].sum() for s in steps]).double()
    return (raw / raw.sum()).tolist()


@pytest.mark.parametrize("thinking", [True, False])
def test_reasoning_end_reads_think_close_or_the_last_reasoning_token(thinking: bool) -> None:
    model = tiny_model("qwen2", vocab_size=100)
    trace = _trace(thinking)
    fmt = _Format(THINK_CLOSE if thinking else None)
    scores = SCORERS.build("attention:query=reasoning_end").score(model, trace, fmt)
    row = trace.reasoning_end if thinking else trace.reasoning_end - 1
    assert scores == pytest.approx(_from_rows(model, trace.all_ids, [row], trace.steps), abs=1e-6)
    assert scores != pytest.approx(AttentionScorer().score(model, trace, fmt), abs=1e-6)


@pytest.mark.parametrize("thinking", [True, False])
def test_probe_reads_its_end_of_thinking_token_or_all_its_tokens(thinking: bool) -> None:
    model = tiny_model("qwen2", vocab_size=100)
    trace = _trace(thinking)
    fmt = _Format(THINK_CLOSE if thinking else None)
    probe = fmt.encode("") + fmt.answer_cue_ids()
    ids = trace.all_ids[: trace.reasoning_end] + probe
    start = trace.reasoning_end
    last = SCORERS.build("attention:query=probe")
    assert last.spec.startswith("attention:query=probe,probe_tokens=last,")
    # Thinking models: the </think> token of the cue; plain models: the probe's final token.
    row = start + 4 if thinking else start + len(probe) - 1
    expected = _from_rows(model, ids, [row], trace.steps)
    assert last.score(model, trace, fmt) == pytest.approx(expected, abs=1e-6)
    every = SCORERS.build("attention:query=probe,probe_tokens=all")
    rows = list(range(start, start + len(probe)))
    expected_all = _from_rows(model, ids, rows, trace.steps)
    assert every.score(model, trace, fmt) == pytest.approx(expected_all, abs=1e-6)


def test_only_the_probe_spec_names_probe_tokens() -> None:
    assert SCORERS.build("attention").spec == (
        "attention:query=last,layers=all,heads=mean,agg=sum,sink=keep"
    )
    assert "probe_tokens" not in SCORERS.build("attention:query=reasoning_end").spec
