"""Integration on the real bundled SmolLM2-135M (de-quantising its GGUF takes about 13 s on one
quiet CPU thread; reading the saved copy, under a second)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from stepprune.capture import last_token_attention
from stepprune.cli import app
from stepprune.gguf_cache import save_copy, saved_copy
from stepprune.models import ChatFormat, bundled_gguf_path, load_model, uses_dequantised_copy
from tests.conftest import eager_attentions
from tests.test_planted import _check_token_lengths

# In one test process with the other tests of the bundled model (see test_engine_vllm.py).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bundled")]


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory) -> Path:
    """A de-quantised copies cache of this module's own, empty before ``bundled`` loads."""
    return tmp_path_factory.mktemp("gguf-cache")


@pytest.fixture(scope="module")
def bundled(gguf_cache: Path):
    """The bundled model de-quantised from its GGUF (float32), which saves its copy in
    ``gguf_cache`` (the session's cache may already hold one: it would be read instead). The
    copy goes to the session's cache too, where the next loads of the session read it."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STEPPRUNE_CACHE", str(gguf_cache))
        assert saved_copy(bundled_gguf_path()) is None
        model, tokenizer = load_model("bundled", device="cpu")
    assert getattr(model, "hf_quantizer", None) is not None  # read from the GGUF
    save_copy(model, tokenizer, bundled_gguf_path())
    return model, tokenizer


def test_scores_on_the_real_model_match_eager(bundled) -> None:
    model, tokenizer = bundled
    fmt = ChatFormat.from_tokenizer(tokenizer)
    ids = fmt.prompt_ids("Tom has 3 boxes of 12 apples. How many apples does he have?")
    ids += fmt.encode("He has 3 boxes of 12 apples, so 3 × 12 = 36.\n\nThe answer is 36.")
    rows = last_token_attention(model, ids)
    attentions = eager_attentions(model, ids)
    reference = torch.stack([a[0, :, -1, :].mean(dim=0) for a in attentions])
    assert rows.shape == (30, len(ids))
    assert (rows - reference).abs().max().item() < 1e-5


def test_planted_token_lengths_match_with_the_smollm2_tokenizer(bundled) -> None:
    """The planted generator's length unit tracks the bundled model's own tokenizer (the one
    read from the GGUF) as it tracks the R1-distill one (test_planted.py)."""
    _check_token_lengths(bundled[1])


def test_a_second_float32_load_reads_the_dequantised_copy_with_the_same_logits(
    bundled, gguf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, first_tokenizer = bundled  # de-quantised, and its copy saved
    monkeypatch.setenv("STEPPRUNE_CACHE", str(gguf_cache))
    copy = saved_copy(bundled_gguf_path())
    assert copy is not None and copy.is_relative_to(gguf_cache)
    second, second_tokenizer = load_model("bundled", device="cpu")
    assert getattr(second, "hf_quantizer", None) is None  # read from the copy
    text = "Tom has 3 boxes of 12 apples. ünïcode \\boxed{36}"
    ids = first_tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == second_tokenizer(text, return_tensors="pt").input_ids.tolist()
    assert second_tokenizer.chat_template == first_tokenizer.chat_template
    with torch.inference_mode():
        assert torch.equal(first(ids).logits, second(ids).logits)


def test_only_float32_loads_of_a_gguf_use_the_copy() -> None:
    """Other dtypes compute with the GGUF's packed kernels, 4-bit loads quantise again, and a
    folder has no GGUF to copy: they keep reading what they are given."""
    assert uses_dequantised_copy("model.gguf", torch.float32)
    assert not uses_dequantised_copy("model.gguf", torch.bfloat16)
    assert not uses_dequantised_copy("model.gguf", torch.float16)
    assert not uses_dequantised_copy("model.gguf", torch.float32, load_in_4bit=True)
    assert not uses_dequantised_copy(None, torch.float32)


def test_run_on_the_embedded_default(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["run", "--limit", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 1 * 1 * 6  # problems x samples x thresholds
    controls = (out / "controls.jsonl").read_text().splitlines()
    assert len(controls) == len(records)  # the random control, at the same kept fractions
    traces = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert all(t["steps"] and t["original_correct"] for t in traces)
    # The model answers every context (the cue opens a box it closes), and grading extracts it.
    assert all(r["answer_text"].startswith("The answer is \\boxed{") for r in records)
    assert sum(r["prediction"] is not None for r in records) >= len(records) // 2
    kept = {r["threshold"]: r["tokens_kept"] for r in records if r["problem_id"] == "planted-000"}
    assert kept[0.0] == sum(s["end"] - s["start"] for s in traces[0]["steps"])
    assert kept[0.5] < kept[0.0]
    assert (out / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
