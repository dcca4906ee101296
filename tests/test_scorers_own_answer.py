"""``query=answer`` and ``attribution`` read the model's own answer by default (the answer
section of a generated trace, the greedy answer on a teacher-forced one); ``answer=reference``
reads the reference answer and is the oracle."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from stepprune.context import text_context
from stepprune.grading import extract_prediction
from stepprune.scorers import SCORERS
from stepprune.scorers.ablation import answer_target_ids
from stepprune.scorers.base import normalise
from stepprune.scorers.own_answer import decode_own_answer, own_prediction
from tests.conftest import eager_attentions, tiny_model
from tests.test_scorer_variants import PROBLEM, _trace


@pytest.fixture(scope="module")
def setup(tiny_r1_tokenizer):
    fmt, trace = _trace(tiny_r1_tokenizer)  # teacher-forced: its answer section is the reference
    model = tiny_model(
        "qwen2",
        vocab_size=len(tiny_r1_tokenizer),
        num_hidden_layers=2,
        initializer_range=0.5,
        eos_token_id=tiny_r1_tokenizer.eos_token_id,
    ).double()
    return model, fmt, trace


def _generated(trace, prediction: str | None, answer_text: str = ""):
    """The same token ids, as if the model had generated them and answered ``prediction``."""
    return dataclasses.replace(
        trace,
        teacher_forced=False,
        original_prediction=prediction,
        original_answer=answer_text,
        steps=list(trace.steps),
    )


def _from_rows(model, ids: list[int], rows: list[int], steps) -> list[float]:
    """Eager attention: mean over layers, heads and rows, summed per step, normalised."""
    attentions = eager_attentions(model, ids)
    row = torch.stack([a[0][:, rows, :].mean(0).mean(0) for a in attentions]).mean(0)
    raw = torch.stack([row[s.start : s.end].sum() for s in steps]).double()
    return (raw / raw.sum()).tolist()


def test_greedy_own_answer_is_what_generate_decodes(setup) -> None:
    model, fmt, trace = setup
    context, answer = decode_own_answer(model, fmt, trace, max_new_tokens=6)
    assert context == text_context(fmt, trace, [True] * len(trace.steps))
    assert context[: trace.reasoning_end] == trace.all_ids[: trace.reasoning_end]
    with torch.inference_mode():
        expected = model.generate(
            torch.tensor([context]), do_sample=False, max_new_tokens=6, min_new_tokens=6
        )[0, len(context) :].tolist()
    assert answer == expected[: len(answer)] and 1 <= len(answer) <= 6


def test_query_answer_reads_the_models_own_answer_on_a_teacher_forced_trace(setup) -> None:
    model, fmt, trace = setup
    scorer = SCORERS.build("attention:query=answer")
    assert scorer.answer == "own" and "answer=own" in scorer.spec
    assert not scorer.reads_gold and not scorer.oracle_on_teacher_forced
    context, answer = decode_own_answer(model, fmt, trace)
    ids = context + answer
    assert ids != trace.all_ids  # not the forced reference answer section
    rows = list(range(trace.reasoning_end, len(ids)))
    expected = _from_rows(model, ids, rows, trace.steps)
    assert scorer.score(model, trace, fmt, None) == pytest.approx(expected, abs=1e-6)


def test_query_answer_reads_the_answer_section_of_a_generated_trace(setup) -> None:
    model, fmt, trace = setup
    generated = _generated(trace, "34")
    rows = list(range(trace.reasoning_end, len(trace.all_ids)))
    expected = _from_rows(model, trace.all_ids, rows, trace.steps)
    got = SCORERS.build("attention:query=answer").score(model, generated, fmt, None)
    assert got == pytest.approx(expected, abs=1e-6)


def test_query_answer_reference_is_the_oracle(setup) -> None:
    model, fmt, trace = setup
    scorer = SCORERS.build("attention:query=answer,answer=reference")
    assert scorer.reads_gold and scorer.oracle_on_teacher_forced
    ids = text_context(fmt, trace, [True] * len(trace.steps)) + answer_target_ids(fmt, "34")
    rows = list(range(trace.reasoning_end, len(ids)))
    expected = _from_rows(model, ids, rows, trace.steps)
    assert scorer.score(model, trace, fmt, "34") == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="needs the reference answer"):
        scorer.score(model, trace, fmt, None)
    # Only query=answer names the option, and only it takes answer=reference.
    assert "answer=" not in SCORERS.build("attention:query=reasoning_end").spec
    with pytest.raises(ValueError, match="needs query=answer"):
        SCORERS.build("attention:query=last,answer=reference")


def _clipped(grads: list[float]) -> list[float]:
    return normalise(np.clip(np.array(grads), 0.0, None))


def test_attribution_uses_the_models_own_answer_on_a_run_trace(setup) -> None:
    model, fmt, trace = setup
    scorer = SCORERS.build("attribution")
    assert scorer.spec == "attribution:answer=own" and not scorer.reads_gold
    assert not scorer.oracle_on_teacher_forced
    # A generated trace (as in a --run folder): the graded prediction, not the gold "34".
    generated = _generated(trace, "35")
    own = scorer.score(model, generated, fmt, PROBLEM.answer)
    assert own == pytest.approx(_clipped(scorer.gradients(model, trace, fmt, "35")), abs=1e-12)
    reference = SCORERS.build("attribution:answer=reference")
    assert reference.reads_gold
    gold = reference.score(model, generated, fmt, PROBLEM.answer)
    assert gold == pytest.approx(_clipped(scorer.gradients(model, trace, fmt, "34")), abs=1e-12)
    assert own != pytest.approx(gold, abs=1e-9)


def test_attribution_own_answer_when_the_trace_is_not_graded_yet(setup) -> None:
    model, fmt, trace = setup
    # Scored before grading (stepprune run): the prediction is extracted from the answer text.
    ungraded = _generated(trace, None, "So the answer is \\boxed{35}.")
    assert own_prediction(model, fmt, ungraded) == "35"
    scorer = SCORERS.build("attribution")
    expected = _clipped(scorer.gradients(model, trace, fmt, "35"))
    assert scorer.score(model, ungraded, fmt, None) == pytest.approx(expected, abs=1e-12)
    # No answer at all: nothing to attribute, uniform.
    silent = _generated(trace, None, "")
    n = len(trace.steps)
    assert scorer.score(model, silent, fmt, None) == pytest.approx([1 / n] * n)


def test_attribution_own_answer_on_a_teacher_forced_trace_is_decoded(setup) -> None:
    model, fmt, trace = setup
    _, answer = decode_own_answer(model, fmt, trace)
    text = fmt.answer_cue_text() + fmt.tokenizer.decode(answer, skip_special_tokens=True)
    prediction = own_prediction(model, fmt, trace)
    assert prediction == extract_prediction(text)
    scores = SCORERS.build("attribution").score(model, trace, fmt, PROBLEM.answer)
    n = len(trace.steps)
    if prediction is None:
        assert scores == pytest.approx([1 / n] * n)
    else:
        expected = _clipped(SCORERS.build("attribution").gradients(model, trace, fmt, prediction))
        assert scores == pytest.approx(expected, abs=1e-12)


def test_own_prediction_prints_no_math_verify_warning(setup, monkeypatch, caplog) -> None:
    import math_verify.parser

    model, fmt, trace = setup
    monkeypatch.setattr(math_verify.parser, "TIMEOUT_WARNING_SHOWN", False)
    with caplog.at_level(logging.WARNING):
        assert own_prediction(model, fmt, _generated(trace, None, "\\boxed{35}")) == "35"
    assert not [r for r in caplog.records if r.name.startswith("math_verify")]
