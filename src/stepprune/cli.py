"""Command-line interface: ``stepprune run ...``.

Every error in the user's input (an option, a file, a run folder) ends the command with one
line ``error: ...`` on stderr and exit code 2, never a traceback: usage errors of the parser
(``OneLineErrors``) and the errors the commands raise (``user_errors``) alike.

Heavy modules (torch, transformers) are imported inside the commands, so a usage error or a
bad run folder is reported at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperCommand

from stepprune.bench import KV_MIN_TOKENS, SCORING_MIN_TOKENS
from stepprune.cli_errors import OneLineErrors, user_errors
from stepprune.cli_options import (
    BudgetOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    DtypeOpt,
    EngineOpt,
    GpuMemoryOpt,
    IntervalOpt,
    JsonOpt,
    ModelOpt,
    ModeOpt,
    PolicyOpt,
    PositionsOpt,
    RayAddressOpt,
    ScorerOpt,
    SeedOpt,
    SegmenterOpt,
    TensorParallelOpt,
    WorkersOpt,
)
from stepprune.plugins import load_plugins
from stepprune.registry import SpecError


def _parse_thresholds(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"--thresholds {text!r}: expected comma-separated numbers such as 0,0.25,0.5"
        ) from None


def _check_at_least(option: str, value: float, minimum: float) -> None:
    if not value >= minimum:  # also refuses nan, which compares false
        raise ValueError(f"{option} must be >= {minimum:g}, got {value:g}")


def _check_model_options(device: str, dtype: str, load_in_4bit: bool = False) -> None:
    """Device, dtype and 4-bit settings, checked before anything is read, written or loaded."""
    from stepprune.models import check_model_options

    check_model_options(device, dtype, load_in_4bit)


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    help="Attention-guided pruning of reasoning steps in chains of thought.",
)


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print measured ratios.")
app.add_typer(bench_app, name="bench")


@app.callback()
def main() -> None:
    """stepprune: score reasoning steps by attention, prune them, measure accuracy vs tokens."""
    with user_errors():
        load_plugins()


class PluginHelp(TyperCommand):
    """``run --help`` with the spec options' choices generated from the registries, read
    when the help is shown (importing the plug-ins loads torch, which parsing must not)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from stepprune.config import ENGINES, MODES, POLICIES, SCORERS

        registries = {"scorer": SCORERS, "policy": POLICIES, "mode": MODES, "engine": ENGINES}
        for param in self.params:
            if param.name in registries:  # options only: run has no such argument
                registered = f" Registered: {registries[param.name].help()}."
                param.help = (param.help or "").split(" Registered: ")[0] + registered
        super().format_help(ctx, formatter)


@app.command(cls=PluginHelp)
def run(
    model: ModelOpt = "bundled",
    dataset: DatasetOpt = "planted",
    data_dir: DataDirOpt = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N problems.")] = None,
    samples: Annotated[int, typer.Option(help="Samples (traces) per problem.")] = 1,
    thresholds: Annotated[
        str | None,
        typer.Option(
            help="Pruning thresholds (percentiles as fractions), comma-separated "
            "(default: 0 to 0.5 in steps of 0.1)."
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Token budget of each trace.")] = 32768,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 0.6,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold.")] = 0.95,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    load_in_4bit: Annotated[
        bool, typer.Option(help="NF4 weights via bitsandbytes (CUDA only; extra 'gpu').")
    ] = False,
    scorer: ScorerOpt = None,
    policy: PolicyOpt = "percentile",
    segmenter: SegmenterOpt = "paragraph",
    mode: ModeOpt = "text",
    engine: EngineOpt = "hf",
    tensor_parallel_size: TensorParallelOpt = None,
    gpu_memory_utilization: GpuMemoryOpt = None,
    workers: WorkersOpt = 1,
    ray_address: RayAddressOpt = None,
    positions: PositionsOpt = None,
    interval: IntervalOpt = None,
    budget: BudgetOpt = None,
    answer_max_tokens: Annotated[
        int, typer.Option(help="Token budget of each re-evaluated answer.")
    ] = 512,
    control: Annotated[
        bool, typer.Option(help="Also re-evaluate a random pruning that keeps as many steps.")
    ] = True,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default runs/<dataset>-<model>).")
    ] = None,
) -> None:
    """Generate traces, score and prune their steps, re-evaluate at each threshold, report.

    The results table goes to stdout; progress, warnings and the closing line to stderr."""
    settings = dict(locals())
    console = Console(stderr=True)
    with user_errors():
        if thresholds is None:
            del settings["thresholds"]  # the config's default
        else:
            settings["thresholds"] = _parse_thresholds(thresholds)
        settings.update(data_dir=str(data_dir) if data_dir else None, out=str(out) if out else None)
        from stepprune.config import RunConfig  # torch, transformers: after the parser

        config = RunConfig.from_flat(**settings)
        from stepprune.experiment import run_experiment

        summary, folder = run_experiment(config, console, Console())
    lowest = min(config.strategies.thresholds)
    truncation = summary.truncation_rate
    console.print(
        f"done: {summary.num_problems} problems x {summary.samples} samples, "
        f"accuracy at {lowest}: {summary.accuracy_at(lowest):.1%}, "
        f"truncated traces: {truncation if truncation is None else f'{truncation:.0%}'}; "
        f"results in {folder}/",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def plugins() -> None:
    """Every scorer, pruning policy, mode and engine, with its spec options."""
    from stepprune.config import ENGINES, MODES, POLICIES, SCORERS

    for title, registry in (
        ("scorers", SCORERS),
        ("policies", POLICIES),
        ("modes", MODES),
        ("engines", ENGINES),
    ):
        typer.echo(f"{title}:")
        for name in registry.names:
            typer.echo(f"  {registry.get(name).option_help()}")


def _load_model(model: str, device: str, dtype: str) -> tuple[Any, Any]:
    """The bench commands' model, its options checked first."""
    _check_model_options(device, dtype)
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
        _check_at_least("--tokens", tokens, SCORING_MIN_TOKENS)
        _check_at_least("--repeats", repeats, 1)
        _check_at_least("--eager-limit-gb", eager_limit_gb, 0)
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
        _check_at_least("--tokens", tokens, KV_MIN_TOKENS)
        loaded, tokenizer = _load_model(model, device, dtype)
        from stepprune.bench.kv import run_kv_bench

        result = run_kv_bench(loaded, tokenizer, tokens)
    _print_json_or_table(result.to_json(), as_json)


@bench_app.command("generate")
def bench_generate(
    prompts: Annotated[int, typer.Option(help="Prompts decoded by each engine.")] = 16,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per prompt (at most).")] = 256,
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
        _check_at_least("--prompts", prompts, 1)
        _check_at_least("--max-new-tokens", max_new_tokens, 1)
        _check_model_options(device, dtype)
        from stepprune.bench.generate import run_generate_bench

        result = run_generate_bench(model, device, dtype, prompts, max_new_tokens, workers_units)
    _print_json_or_table(result.to_json(), as_json)


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run folders.")],
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default RUN_DIR/report).")
    ] = None,
) -> None:
    """Tables (Markdown, terminal, JSON) and plots for one run or several side by side.

    The tables go to stdout; the list of files written to stderr."""
    from stepprune.reporting.report import default_report_dir, write_report

    with user_errors():
        folder = out or default_report_dir(run_dirs)
        write_report(run_dirs, folder, Console(), err=Console(stderr=True))


@app.command()
def show(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    problem: Annotated[str, typer.Option(help="Problem id.")],
    sample: Annotated[int, typer.Option(help="Sample index.")] = 0,
    threshold: Annotated[
        float | None, typer.Option(help="Threshold whose pruning is shown (default: largest).")
    ] = None,
    html: Annotated[
        Path | None, typer.Option(help="Also write a self-contained HTML page here.")
    ] = None,
) -> None:
    """One trace with steps shaded by importance and pruned steps struck through."""
    from stepprune.reporting.show import show_problem

    console = Console()
    with user_errors():
        written = show_problem(run_dir, problem, sample, threshold, html, console)
    if written is not None:
        Console(stderr=True).print(f"HTML page: {written}", highlight=False, soft_wrap=True)


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
            help="Planted set: semantic (necessary steps are needed by the derivation; the "
            "last one states the answer) | causal (each is needed by the answer itself)."
        ),
    ] = "semantic",
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
        _check_at_least("--problems", problems, 1)
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


@app.command()
def calibrate(
    run: Annotated[Path, typer.Option(help="A run folder whose traces calibrate the heads.")],
    out: Annotated[Path, typer.Option(help="The receiver-head file to write (JSON).")],
    top_k: Annotated[int, typer.Option(help="Number of receiver heads.")] = 8,
    scorer: Annotated[
        str, typer.Option(help="Attention spec whose queries/layers are measured.")
    ] = "attention",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Choose receiver heads on a run's traces, for attention:heads=receiver,calibration=FILE."""
    with user_errors():
        _check_at_least("--top-k", top_k, 1)
        _check_model_options(device, dtype)
        from stepprune.scorers.receiver import calibrate_run

        heads = calibrate_run(run, out, top_k, scorer, device, dtype)
    Console(stderr=True).print(
        f"{len(heads)} receiver heads written to {out}; use --scorer "
        f"attention:heads=receiver,calibration={out}",
        highlight=False,
        soft_wrap=True,
    )


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
            loaded, tokenizer, load, step_ms, measure, dry_run, threads
        )
    _print_json_or_table(result, as_json)
