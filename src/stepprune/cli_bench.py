"""``stepprune bench ...``: benchmarks that print measured ratios, and the checks the
commands share (numeric minimums; model options before anything is loaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from stepprune.bench import KV_MIN_TOKENS, SCORING_MIN_TOKENS
from stepprune.cli_errors import user_errors
from stepprune.cli_options import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, SeedOpt
from stepprune.registry import SpecError


def check_at_least(option: str, value: float, minimum: float) -> None:
    if not value >= minimum:  # also refuses nan, which compares false
        raise ValueError(f"{option} must be >= {minimum:g}, got {value:g}")


def check_model_options_early(device: str, dtype: str, load_in_4bit: bool = False) -> None:
    """Device, dtype and 4-bit settings, checked before anything is read, written or loaded."""
    from stepprune.models import check_model_options

    check_model_options(device, dtype, load_in_4bit)


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print measured ratios.")


def _load_model(model: str, device: str, dtype: str) -> tuple[Any, Any]:
    """The bench commands' model, its options checked first."""
    check_model_options_early(device, dtype)
    from stepprune.models import load_model

    return load_model(model, device, dtype)


def _scorer_specs(text: str | None) -> list[str] | None:
    """``--scorers`` as spec strings (None: every built-in variant), each checked now, before
    the model is loaded; options that need the model (``layers=99``) are checked on use."""
    if text is None:
        return None
    specs = [s.strip() for s in text.split(";") if s.strip()]
    if not specs:
        raise ValueError(f"--scorers {text!r}: give at least one scorer spec")
    from stepprune.scorers import SCORERS

    for spec in specs:
        try:
            SCORERS.build(spec)
        except SpecError as error:
            raise SpecError(f"--scorers: {error}") from None
    return specs


def _print_json_or_table(data: object, as_json: bool) -> None:
    """A benchmark's result on stdout: plain JSON, or JSON highlighted for a terminal."""
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        Console().print_json(json.dumps(data))


@bench_app.command("scoring")
def bench_scoring(
    tokens: Annotated[int, typer.Option(help="Sequence length N.")] = 1024,
    model: ModelOpt = "bundled",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    repeats: Annotated[int, typer.Option(help="Timed repeats (median).")] = 5,
    eager_limit_gb: Annotated[
        float, typer.Option(help="Run eager only if its attention weights fit in this (GiB).")
    ] = 8.0,
    as_json: JsonOpt = False,
) -> None:
    """Exactness, time and peak memory of attention scoring vs a plain forward and eager."""
    with user_errors():
        check_at_least("--tokens", tokens, SCORING_MIN_TOKENS)
        check_at_least("--repeats", repeats, 1)
        check_at_least("--eager-limit-gb", eager_limit_gb, 0)
        loaded, tokenizer = _load_model(model, device, dtype)
        from stepprune.bench.scoring import run_scoring_bench

        result = run_scoring_bench(loaded, tokenizer, tokens, repeats, eager_limit_gb)
    _print_json_or_table(result.to_json(), as_json)


@bench_app.command("kv")
def bench_kv(
    tokens: Annotated[int, typer.Option(help="Trace length N.")] = 4096,
    model: ModelOpt = "bundled",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """kv vs text re-evaluation time, online peak cache at a 50% budget, decode speed, exactness."""
    with user_errors():
        check_at_least("--tokens", tokens, KV_MIN_TOKENS)
        loaded, tokenizer = _load_model(model, device, dtype)
        from stepprune.bench.kv import run_kv_bench

        result = run_kv_bench(loaded, tokenizer, tokens)
    _print_json_or_table(result.to_json(), as_json)


@bench_app.command("generate")
def bench_generate(
    prompts: Annotated[int, typer.Option(help="Prompts decoded by each engine.")] = 16,
    max_new_tokens: Annotated[
        int, typer.Option(help="Tokens per prompt, and per trace of the workers run (at most).")
    ] = 256,
    workers_units: Annotated[
        int, typer.Option(help="Planted units of the --workers 1 vs 2 run (0: skip; needs Ray).")
    ] = 8,
    model: ModelOpt = "bundled",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """hf vs vllm tokens/s and greedy agreement on the same prompts; --workers 1 vs 2."""
    with user_errors():
        check_at_least("--prompts", prompts, 1)
        check_at_least("--max-new-tokens", max_new_tokens, 1)
        check_model_options_early(device, dtype)
        from stepprune.bench.generate import run_generate_bench

        result = run_generate_bench(model, device, dtype, prompts, max_new_tokens, workers_units)
    _print_json_or_table(result.to_json(), as_json)


@bench_app.command("scorers")
def bench_scorers(
    model: Annotated[
        str | None,
        typer.Option(help="Model (default: the bundled SmolLM2; with --run: the run's own)."),
    ] = None,
    scorers: Annotated[
        str | None,
        typer.Option(help="Scorer specs separated by ';' (default: every built-in variant)."),
    ] = None,
    problems: Annotated[int, typer.Option(help="Planted problems.")] = 30,
    seed: SeedOpt = 0,
    planted: Annotated[
        str,
        typer.Option(
            help="Planted set: matched (planted steps are distractor computations of the "
            "necessary steps' form and length) | semantic (necessary steps are needed by the "
            "derivation; the last one states the answer) | causal (each is needed by the "
            "answer itself)."
        ),
    ] = "matched",
    run_dir: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="A run folder of `stepprune run`: instead of the planted set, compare every "
            "scorer with the ablation reference on its traces (Spearman, recovery vs random); "
            "results are cached in the folder.",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Planted-step ground truth: AUROC (95% CI), answer recovery and lift of every scorer; or,
    with --run, each scorer's agreement with ablation on a run's traces."""
    console = Console(stderr=True)
    with user_errors():
        check_at_least("--problems", problems, 1)
        specs = _scorer_specs(scorers)
        from stepprune.planted import PLANTED_VARIANTS

        if planted not in PLANTED_VARIANTS:
            raise ValueError(f"--planted {planted!r}: choose {' or '.join(PLANTED_VARIANTS)}")
        if run_dir is not None:
            if model is not None:
                raise ValueError("--model: not with --run (the run's own model scores its traces)")
            from stepprune.bench.run_scorers import (
                DEFAULT_RUN_SCORERS,
                run_model_name,
                run_results_markdown,
                run_scorers_benchmark,
            )

            loaded, tokenizer = _load_model(run_model_name(run_dir), device, dtype)
            result = run_scorers_benchmark(
                run_dir,
                loaded,
                tokenizer,
                specs or DEFAULT_RUN_SCORERS,
                seed=seed,
                console=console,
            )
            typer.echo(
                json.dumps(result.to_json(), indent=2) if as_json else run_results_markdown(result)
            )
            return
        loaded, tokenizer = _load_model(model or "bundled", device, dtype)
        from stepprune.bench.scorers import results_table_markdown, run_scorer_benchmark

        results = run_scorer_benchmark(
            loaded,
            tokenizer,
            specs,
            n_problems=problems,
            seed=seed,
            console=console,
            planted=planted,
        )
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in results], indent=2))
    else:
        typer.echo(results_table_markdown(results))


@bench_app.command("pipeline")
def bench_pipeline(
    workload: Annotated[str, typer.Option(help="seed, or PxSxT[xK[xA]] (see bench)")] = "2x2x256",
    measure: Annotated[int, typer.Option(help="Traces (trace batches) run; the rest scaled.")] = 1,
    step_ms: Annotated[float | None, typer.Option(help="Per-forward ms to project.")] = None,
    dry_run: Annotated[bool, typer.Option(help="A one-layer stand-in model: counts only.")] = False,
    random_weights: Annotated[
        str | None, typer.Option(help="Config folder: random weights.")
    ] = None,
    threads: Annotated[int, typer.Option(help="torch threads (0: torch's default).")] = 1,
    kv_batch_mib: Annotated[
        int | None,
        typer.Option(min=1, help="kv mode's cache MiB per batch (default: the mode's batch_mib)."),
    ] = None,
    online_batch_mib: Annotated[
        int | None,
        typer.Option(
            min=1, help="Online mode's cache MiB per batch (default: the mode's batch_mib)."
        ),
    ] = None,
    model: ModelOpt = "bundled",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Per stage: seconds, sequential forwards, rows per forward, projected time at --step-ms."""
    with user_errors():
        from stepprune.bench import pipeline

        load = pipeline.parse_workload(workload)
        if random_weights is None:
            loaded, tokenizer = _load_model(model, device, dtype)
        else:
            loaded, tokenizer = pipeline.random_weights(random_weights, dtype, device)
        result = pipeline.run_pipeline_bench(
            loaded,
            tokenizer,
            load,
            step_ms,
            measure,
            dry_run,
            threads,
            kv_batch_mib=kv_batch_mib or pipeline.DEFAULT_BATCH_MIB,
            online_batch_mib=online_batch_mib or pipeline.ONLINE_BATCH_MIB,
        )
    _print_json_or_table(result, as_json)
