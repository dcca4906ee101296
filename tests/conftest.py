"""Shared fixtures: tokenizers of real reasoning models and tiny random-weight models."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile

# Before transformers/huggingface_hub are imported: they read it once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
# One thread per test process: under pytest-xdist two processes share the two cores, and a
# second torch thread each parks more than it computes (see the README on timings).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# De-quantised GGUF copies (stepprune.gguf_cache) go to a folder of this test session, removed
# at its end, not to the user's ~/.cache: the first load of the bundled model makes one (40 s).
# The pytest process makes the folder; its xdist processes inherit the variable and share the
# folder (copies appear whole or not at all), so the session de-quantises once, not once per
# process.
if "STEPPRUNE_CACHE" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="stepprune-test-cache-")
    os.environ["STEPPRUNE_CACHE"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# torch and transformers are imported where they are used: the pytest process that only hands
# tests to its xdist processes never needs them (5-6 s of CPU at every start).
if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS = SHARED / "models"
DATA = SHARED / "data"
R1 = MODELS / "DeepSeek-R1-Distill-Qwen-1.5B"
QWEN3 = MODELS / "Qwen3-0.6B"
QWEN25 = MODELS / "Qwen2.5-1.5B-Instruct"

requires_shared = pytest.mark.skipif(not MODELS.is_dir(), reason=f"{MODELS} not found")


def _architecture(arch: str) -> tuple[type, type, dict]:
    """(config class, model class, extra settings) of ``arch``."""
    import transformers

    return {
        # Small dimensions, real vocabulary sizes, grouped-query attention (4 query heads, 2 kv).
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"head_dim": 16}),
    }[arch]


def tiny_model(arch: str, vocab_size: int = 151936, seed: int = 0, **overrides) -> PreTrainedModel:
    """A random-weight causal LM of the given architecture, float32, eval mode, SDPA."""
    import torch

    config_cls, model_cls, extra = _architecture(arch)
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=151643,
        **extra,
    )
    settings.update(overrides)
    config = config_cls(**settings)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return model_cls(config).eval()


def eager_attentions(model: PreTrainedModel, ids: list[int] | torch.Tensor) -> tuple[torch.Tensor]:
    """The reference: full attention matrices from eager ``output_attentions``, one
    ``(batch, heads, queries, keys)`` tensor per layer. The model's implementation is restored
    afterwards."""
    import torch

    ids = ids if isinstance(ids, torch.Tensor) else torch.tensor([ids])
    previous = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        with torch.inference_mode():
            return model(ids, output_attentions=True).attentions
    finally:
        model.config._attn_implementation = previous


@pytest.fixture(scope="session")
def r1_tokenizer() -> PreTrainedTokenizerBase:
    if not R1.is_dir():
        pytest.skip(f"{R1} not found")
    return _auto_tokenizer(R1)


@pytest.fixture(scope="session")
def qwen3_tokenizer() -> PreTrainedTokenizerBase:
    if not QWEN3.is_dir():
        pytest.skip(f"{QWEN3} not found")
    return _auto_tokenizer(QWEN3)


@pytest.fixture(scope="session")
def qwen25_tokenizer() -> PreTrainedTokenizerBase:
    if not QWEN25.is_dir():
        pytest.skip(f"{QWEN25} not found")
    return _auto_tokenizer(QWEN25)


def _auto_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def small_vocabulary(
    tokenizer: PreTrainedTokenizerBase, size: int = 512
) -> PreTrainedTokenizerBase:
    """``tokenizer`` retrained to about ``size`` tokens on GSM8K's first problems and solutions.

    The pre-tokenizer, the added tokens (``<think>``, ``</think>``, the special tokens) and the
    chat template are kept, and byte-level BPE still encodes any text. Loading it takes
    milliseconds instead of seconds, and a model over it computes a 512-wide head instead of a
    151,936-wide one: this is what makes runs on a tiny model fast in tests.
    """
    lines = (DATA / "gsm8k_test.jsonl").read_text(encoding="utf-8").splitlines()[:200]
    # Paragraphs end in "\n\n", as steps do: it becomes one token, as in the real vocabulary.
    corpus = [
        "\n\n".join([row["problem"], *row["solution"].splitlines()])
        for row in map(json.loads, lines)
    ]
    return tokenizer.train_new_from_iterator(corpus, vocab_size=size)


@pytest.fixture(scope="session")
def tiny_r1_dir(tmp_path_factory, r1_tokenizer) -> Path:
    """A saved model folder: tiny random Qwen2 weights with the R1-distill tokenizer retrained to
    a small vocabulary (``small_vocabulary``: same chat template and added tokens, new ids)."""
    folder = tmp_path_factory.mktemp("tiny-r1")
    tokenizer = small_vocabulary(r1_tokenizer)
    model = tiny_model("qwen2", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_r1_tokenizer(tiny_r1_dir: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``tiny_r1_dir``."""
    return _auto_tokenizer(tiny_r1_dir)


@pytest.fixture(scope="session")
def fork_server():
    """One pre-loaded interpreter per test process that runs ``python -m stepprune ARGS``
    commands as its children (``tests.processes.ForkServer``: 5-7 s of imports once, not once
    per command). Each command gets its own environment; the server's matters only for what is
    read at import (the offline switches, set above)."""
    from tests.processes import ForkServer

    with ForkServer(dict(os.environ)) as server:
        yield server
