"""CLI options declared once and shared by every command (as lighteval's ``cli_args``).

Each alias is an ``Annotated`` type for a typer parameter: ``model: ModelOpt = "bundled"``.
The plug-in specs (``--scorer``, ``--policy``, ``--mode``, ``--engine``) get the list of
registered plug-ins in ``run --help`` (``cli.PluginHelp``) and in ``stepprune plugins``, both
generated from the registries when shown (importing them loads torch, which the parser must
not wait for).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PLUGINS_HINT = "`stepprune plugins` lists every one with its options"

ModelOpt = Annotated[
    str, typer.Option(help="Hub id, local directory, .gguf file, or 'bundled' (SmolLM2-135M).")
]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
DtypeOpt = Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of sampling and of the planted set.")]

DatasetOpt = Annotated[
    str,
    typer.Option(
        help="aime24 | aime25 | math500 | gsm8k | amc23 | planted[:semantic|causal] | path "
        "to a .jsonl (id, problem, answer; optional reasoning, or prompt_ids + output_ids)."
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="STEPPRUNE_DATA_DIR", help="Folder with local copies of the built-in datasets."
    ),
]
ScorerOpt = Annotated[
    str | None,
    typer.Option(
        help="Step scorer spec, e.g. attention:query=probe,agg=mean or mix:a=SPEC,b=SPEC,w=W "
        f"(a SPEC with commas in parentheses); {PLUGINS_HINT}. Default: attention (online "
        "mode: attention:query=probe)."
    ),
]
PolicyOpt = Annotated[str, typer.Option(help=f"Pruning policy spec; {PLUGINS_HINT}.")]
ModeOpt = Annotated[
    str,
    typer.Option(
        help="Re-evaluation mode spec: text (re-prompt with the kept steps) | kv[:positions="
        "original|rerotate] (answer from a pruned KV cache) | online[:interval=N,budget=N] "
        f"(evict steps during generation, Think Clearly); {PLUGINS_HINT}."
    ),
]
EngineOpt = Annotated[
    str,
    typer.Option(
        help="Engine spec for traces and text-mode answers: hf (transformers) | vllm[:tp=N,"
        "gpu_memory=F] (vLLM in its own process: `make vllm`, or the extra 'vllm' on a GPU); "
        f"{PLUGINS_HINT}."
    ),
]
SegmenterOpt = Annotated[
    str,
    typer.Option(
        help="Step boundaries: paragraph (line ends if there is no blank line) | line | "
        "sentence | markers."
    ),
]
# The 0.2 flags, kept as aliases of the mode's and the engine's spec options.
PositionsOpt = Annotated[
    str | None, typer.Option(help="Alias of --mode kv:positions=original|rerotate.")
]
IntervalOpt = Annotated[int | None, typer.Option(help="Alias of --mode online:interval=N.")]
BudgetOpt = Annotated[int | None, typer.Option(help="Alias of --mode online:budget=N.")]
TensorParallelOpt = Annotated[int | None, typer.Option(help="Alias of --engine vllm:tp=N.")]
GpuMemoryOpt = Annotated[
    float | None, typer.Option(help="Alias of --engine vllm:gpu_memory=F (default 0.5 on a GPU).")
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        help="Ray workers for the transformers stages (scoring, kv/online modes, hf traces), "
        "each with its own model on one device (extra 'ray')."
    ),
]
RayAddressOpt = Annotated[
    str | None, typer.Option(help="A running Ray cluster to spread the work over (host:port).")
]
