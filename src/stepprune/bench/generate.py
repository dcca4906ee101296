"""Generation throughput of the engines, and the transformers stages on Ray workers
(``stepprune bench generate``).

Engines: the same prompts (chat-template prompts of built-in or planted problems) are decoded
greedily to ``max_new_tokens`` (or an end token) by the transformers engine and by vLLM, in one
run: tokens per second of each (generated tokens over wall seconds, start-up excluded), their
ratio, vLLM's start-up seconds, and the share of prompts whose greedy continuations are
identical (float differences between the two implementations can move a greedy token).

Workers: the same small ``stepprune run`` (planted problems, text mode, traces of at most
``max_new_tokens``, as the engines' continuations) with ``--workers 1`` and ``--workers 2``,
each in a fresh folder: wall seconds of each (model loading and Ray start included, as a user
pays them) and their ratio.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from stepprune.config import RunConfig
from stepprune.engines import HFEngine, VLLMEngine
from stepprune.engines.vllm import VLLMOptions, model_folder_for_vllm
from stepprune.models import ChatFormat, eos_token_ids, load_model, resolve_model_source
from stepprune.planted import generate_planted


@dataclass
class GenerateBench:
    prompts: int
    max_new_tokens: int
    tokens_hf: int
    tokens_vllm: int
    seconds_hf: float
    seconds_vllm: float
    tokens_per_s_hf: float
    tokens_per_s_vllm: float
    vllm_over_hf: float
    greedy_agreement: float
    vllm_startup_s: float
    workers_units: int | None = None
    workers_1_s: float | None = None
    workers_2_s: float | None = None
    workers_speedup: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def bench_prompts(fmt: ChatFormat, count: int) -> list[list[int]]:
    """Chat-template prompts of ``count`` planted problem statements."""
    return [fmt.prompt_ids(p.problem) for p in generate_planted(count, seed=0)]


def _timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def run_engines(
    model: str, device: str, dtype: str, prompts: int, max_new_tokens: int
) -> dict[str, Any]:
    """Greedy decoding of the same prompts by both engines (see the module docstring)."""
    loaded, tokenizer = load_model(model, device, dtype)
    fmt = ChatFormat.from_tokenizer(tokenizer)
    eos = eos_token_ids(loaded, tokenizer)
    contexts = bench_prompts(fmt, prompts)
    hf = HFEngine(loaded, tokenizer, eos, tokenizer.pad_token_id or eos[0], batch_size=prompts)
    ours, seconds_hf = _timed(lambda: hf.greedy(contexts, max_new_tokens, None))
    source, gguf_file = resolve_model_source(model)
    folder = model_folder_for_vllm(loaded, tokenizer, source, gguf_file)
    dtype_name = str(loaded.dtype).removeprefix("torch.")
    longest = max(len(c) for c in contexts) + max_new_tokens + 16
    engine, startup = _timed(
        lambda: VLLMEngine(
            folder, tokenizer, eos, dtype_name, options=VLLMOptions(max_model_len=longest)
        )
    )
    try:
        theirs, seconds_vllm = _timed(lambda: engine.greedy(contexts, max_new_tokens, None))
    finally:
        engine.close()
    tokens_hf = sum(len(c.ids) for c in ours)
    tokens_vllm = sum(len(c.ids) for c in theirs)
    same = sum(a.ids == b.ids for a, b in zip(ours, theirs, strict=True))
    return {
        "prompts": prompts,
        "max_new_tokens": max_new_tokens,
        "tokens_hf": tokens_hf,
        "tokens_vllm": tokens_vllm,
        "seconds_hf": round(seconds_hf, 2),
        "seconds_vllm": round(seconds_vllm, 2),
        "tokens_per_s_hf": round(tokens_hf / seconds_hf, 1),
        "tokens_per_s_vllm": round(tokens_vllm / seconds_vllm, 1),
        "vllm_over_hf": round((tokens_vllm / seconds_vllm) / (tokens_hf / seconds_hf), 2),
        "greedy_agreement": round(same / len(contexts), 3),
        "vllm_startup_s": round(startup, 1),
    }


# The Ray comparison's run folders: a killed bench leaves its own, the next one removes it.
SCRATCH_PREFIX = "stepprune-bench-generate-"


def _sweep_scratch() -> None:
    """Remove the run folders of benches that were killed (their process is gone)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = folder.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and sys.platform == "linux":
            shutil.rmtree(folder, ignore_errors=True)


def run_workers(
    model: str, device: str, dtype: str, units: int, max_new_tokens: int
) -> dict[str, Any]:
    """Wall seconds of the same run with one and two Ray workers (fresh folders)."""
    from stepprune.experiment import run_experiment

    quiet = Console(quiet=True)
    seconds = {}
    _sweep_scratch()
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as scratch:
        for workers in (1, 2):
            config = RunConfig.from_flat(
                model=model,
                device=device,
                dtype=dtype,
                limit=units,
                max_new_tokens=max_new_tokens,
                thresholds=[0.0, 0.3],
                answer_max_tokens=64,
                workers=workers,  # 1: the default, in this process; 2: two Ray actors
                out=str(Path(scratch) / f"w{workers}"),
            )
            _, seconds[workers] = _timed(lambda c=config: run_experiment(c, quiet, quiet))
    return {
        "workers_units": units,
        "workers_1_s": round(seconds[1], 1),
        "workers_2_s": round(seconds[2], 1),
        "workers_speedup": round(seconds[1] / seconds[2], 2),
    }


def run_generate_bench(
    model: str = "bundled",
    device: str = "auto",
    dtype: str = "auto",
    prompts: int = 16,
    max_new_tokens: int = 256,
    workers_units: int = 0,
) -> GenerateBench:
    """Both parts; ``workers_units`` 0 skips the Ray comparison.

    Raises:
        ValueError: ``workers_units`` below 0, or above 0 without Ray; checked before the
            engines run (minutes), not after.
    """
    if workers_units < 0:
        raise ValueError(f"--workers-units must be >= 0 (0 skips the Ray run), got {workers_units}")
    if workers_units and importlib.util.find_spec("ray") is None:
        raise ValueError("--workers-units needs Ray: pip install 'stepprune[ray]' (or 0 to skip)")
    result = run_engines(model, device, dtype, prompts, max_new_tokens)
    if workers_units:
        result |= run_workers(model, device, dtype, workers_units, max_new_tokens)
    return GenerateBench(**result)
