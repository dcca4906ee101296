"""Online mode: incremental segmentation at checkpoints, and the ``scope=reasoning`` threshold."""

from __future__ import annotations

import pytest

from stepprune.modes.online import OnlineConfig, OnlinePruner
from stepprune.steps import SEGMENTERS, IncrementalSegmenter, Segmenter
from tests.test_online import SAMPLING, _forced, setup  # noqa: F401 (fixture)


@pytest.mark.parametrize("kind", SEGMENTERS)
def test_incremental_segmentation_equals_segmenting_everything(setup, kind: str) -> None:  # noqa: F811
    session, _, trace = setup
    segmenter = Segmenter(kind)
    incremental = IncrementalSegmenter(segmenter, session.tokenizer)
    ids, start = trace.all_ids, len(trace.prompt_ids)
    read = []
    for end in [*range(start + 1, trace.reasoning_end, 7), trace.reasoning_end]:
        before = len(incremental.texts)
        got = incremental(ids, start, end)
        read.append(len(incremental.texts) - before)
        assert got == segmenter(session.tokenizer, ids, start, end)
    assert sum(read) == trace.reasoning_end - start  # every token decoded once


def _evicted_fraction(session, trace, **options) -> float:
    pruner = OnlinePruner(session, OnlineConfig(policy=session.policy, recent=8, **options))
    result = pruner.run(trace.prompt_ids, SAMPLING, 0, _forced(trace), answer_max_tokens=2)
    reasoning = trace.reasoning_end - len(trace.prompt_ids)
    return len(result.evicted_positions) / reasoning


def test_reasoning_scope_evicts_at_most_the_threshold_and_does_not_collapse(setup) -> None:  # noqa: F811
    session, _, trace = setup
    fractions = {
        t: _evicted_fraction(session, trace, threshold=t, scope="reasoning") for t in (0.2, 0.5)
    }
    assert fractions[0.2] <= 0.2 and 0 < fractions[0.5] <= 0.5
    # Today's meaning compounds: the policy drops half of what is cached at every checkpoint.
    assert _evicted_fraction(session, trace, threshold=0.5) > fractions[0.5]
    with pytest.raises(ValueError, match="scope"):
        OnlineConfig(policy=session.policy, scope="everything")
