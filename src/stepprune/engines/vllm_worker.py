"""The vLLM side of the ``vllm`` engine: a process that decodes token ids with ``vllm.LLM``.

Run by path with the Python of an environment that has vLLM (``make vllm`` builds
``.venv-vllm``); it imports only vLLM and the standard library, never stepprune, so that
environment may pin its own transformers. It speaks JSON lines:

- it first writes ``{"ready": true, "vllm": VERSION, "startup_s": S}`` (or ``{"error": ...}``);
- each line it reads is a job ``{"job": N, "requests": [{"id", "prompt", "max_tokens",
  "temperature", "top_p", "seed", "stop", "stop_token_ids"}, ...]}``; every request is added to
  one engine and stepped together (this is where vLLM's throughput comes from), and each
  finished request is written as soon as it finishes: ``{"job", "id", "ids", "finish":
  "stop" | "length", "stop_reason"}``; then ``{"job", "done": true}``;
- end of input ends the process.

Everything else that vLLM prints goes to standard error: standard output carries the protocol
only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Run by path, this file's folder comes first on sys.path, where stepprune's own ``vllm.py``
# (the client) would shadow the vLLM package.
HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p and str(Path(p).resolve()) != HERE]


def _protocol_stream():
    """A private copy of standard output for the protocol; fd 1 then points to standard error,
    so that prints from vLLM or its dependencies cannot corrupt a line."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol


def _exit_with_parent(parent_pid: int) -> None:
    """End when the parent does, even by SIGKILL: the kernel's PR_SET_PDEATHSIG on Linux, and a
    thread that watches getppid() everywhere (a run killed mid-batch must not leave vLLM)."""
    import contextlib
    import ctypes
    import signal
    import threading

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no prctl: the watchdog alone
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="CUDA graphs / torch.compile")
    return parser.parse_args(argv)


def _load(args: argparse.Namespace):
    from vllm import LLM

    options = {
        "model": args.model,
        "dtype": args.dtype,
        "seed": args.seed,
        "max_model_len": args.max_model_len,
        "tensor_parallel_size": args.tensor_parallel_size,
        # Sampling settings are all explicit: the model's generation_config.json (R1 ships
        # temperature, top_p) must not change them.
        "generation_config": "vllm",
        # Eager start-up is seconds instead of a minute or more of compilation.
        "enforce_eager": not args.compile,
    }
    if args.gpu_memory_utilization is not None:
        options["gpu_memory_utilization"] = args.gpu_memory_utilization
    return LLM(**{k: v for k, v in options.items() if v is not None})


def _params(request: dict):
    from vllm import SamplingParams

    return SamplingParams(
        n=1,
        max_tokens=request["max_tokens"],
        temperature=request["temperature"],
        top_p=request["top_p"],
        top_k=0,  # no top-k (the R1 protocol)
        min_p=0.0,
        repetition_penalty=1.0,
        seed=request.get("seed"),
        stop=request.get("stop") or None,
        stop_token_ids=request.get("stop_token_ids") or None,
        # Stop at end-of-sequence tokens as the transformers engine does; keep them in ids.
        skip_special_tokens=False,
        detokenize=bool(request.get("stop")),
    )


def _run_job(engine, job: dict, protocol) -> None:
    """Add every request of ``job`` and write each one as it finishes (lines carry the job's
    number, so the parent can tell a late line of an abandoned job)."""
    names = {}
    for request in job["requests"]:
        name = f"r{request['id']}-{time.monotonic_ns()}"
        names[name] = request["id"]
        engine.add_request(name, {"prompt_token_ids": request["prompt"]}, _params(request))
    while engine.has_unfinished_requests():
        for output in engine.step():
            if not output.finished:
                continue
            completion = output.outputs[0]
            line = {
                "job": job.get("job"),
                "id": names.pop(output.request_id),
                "ids": list(completion.token_ids),
                "finish": completion.finish_reason,
                "stop_reason": completion.stop_reason,
            }
            protocol.write(json.dumps(line) + "\n")
    protocol.write(json.dumps({"job": job.get("job"), "done": True}) + "\n")


def main(argv: list[str] | None = None) -> int:
    protocol = _protocol_stream()
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.parent_pid is not None:
        _exit_with_parent(args.parent_pid)
    started = time.perf_counter()
    try:
        import vllm

        llm = _load(args)
    except Exception as error:  # reported to the parent, which names the model
        protocol.write(json.dumps({"error": f"{type(error).__name__}: {error}"}) + "\n")
        return 1
    ready = {"ready": True, "vllm": vllm.__version__, "startup_s": time.perf_counter() - started}
    protocol.write(json.dumps(ready) + "\n")
    engine = llm.llm_engine
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            _run_job(engine, json.loads(line), protocol)
        except Exception as error:
            protocol.write(json.dumps({"error": f"{type(error).__name__}: {error}"}) + "\n")
            return 1
    _stop(engine, protocol)
    return 0


def _stop(engine, protocol) -> None:
    """End of input: stop vLLM's engine (and, where it runs them, its processes), then leave
    without the interpreter's teardown of torch and vLLM's modules, which only costs time: from
    end of input to exit, 4.5 s (about 5 s of CPU) with it, 1.7 s without (SmolLM2-135M on
    this 2-core CPU)."""
    engine.engine_core.shutdown()
    protocol.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
