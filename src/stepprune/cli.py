"""Command-line interface: ``stepprune run ...``.

Every error in the user's input (an option, a file, a run folder) ends the command with one
line ``error: ...`` on stderr and exit code 2, never a traceback: usage errors of the parser
(``OneLineErrors``) and the errors the commands raise (``user_errors``) alike.

Heavy modules (torch, transformers) are imported inside the commands, so a usage error or a
bad run folder is reported at once.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from stepprune.bench import KV_MIN_TOKENS, SCORING_MIN_TOKENS
from stepprune.problems import DatasetError
from stepprune.registry import SpecError
from stepprune.runfolder import RunFolderError

# Exit code of every error in the user's input (the parser's usage errors use it too).
USER_ERROR_EXIT = 2
# The --thresholds default (config.DEFAULT_THRESHOLDS; config imports torch, so it is not
# imported to build the parser).
DEFAULT_THRESHOLDS_TEXT = "0.0,0.1,0.2,0.3,0.4,0.5"


def one_line(text: str) -> str:
    """A message as one line: its non-empty lines joined."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _is_user_error(error: BaseException) -> bool:
    """Errors in the user's input: bad datasets, specs, run folders, settings (ValueError),
    models that cannot be loaded, files that cannot be read or written (OSError), a vLLM that
    is missing or cannot start."""
    if isinstance(error, DatasetError | RunFolderError | SpecError | ValueError | OSError):
        return True
    # These modules import torch: their errors can only exist once they have been imported.
    kinds = [
        ("stepprune.models", "ModelLoadError"),
        ("stepprune.grading", "GradingError"),
        ("stepprune.engines.vllm", "VLLMError"),
    ]
    return any(
        isinstance(error, getattr(sys.modules[module], name))
        for module, name in kinds
        if module in sys.modules
    )


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}"
    return one_line(str(error)) or type(error).__name__


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn an error in the user's input into one line on stderr and exit code 2."""
    try:
        yield
    except Exception as error:
        # A closed pipe (`stepprune show ... | head`) is not an error of the user's input: the
        # parser's own handling ends the command quietly.
        if isinstance(error, BrokenPipeError) or not _is_user_error(error):
            raise
        # Plain echo: a rich console would wrap the message over several lines.
        typer.echo(f"error: {_message(error)}", err=True)
        raise typer.Exit(USER_ERROR_EXIT) from None


class OneLineErrors(TyperGroup):
    """The command group, with the parser's usage errors ("No such option", "Invalid value
    for '--samples'", "Missing option '--problem'") as one line on stderr instead of a usage
    panel, exit code 2."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except typer.TyperException as error:  # click's ClickException and UsageError
            # Without arguments a group prints its help (already shown): nothing to add.
            if type(error).__name__ != "NoArgsIsHelpError":
                context = getattr(error, "ctx", None)
                hint = f" (see '{context.command_path} --help')" if context is not None else ""
                typer.echo(f"error: {one_line(error.format_message())}{hint}", err=True)
            sys.exit(getattr(error, "exit_code", USER_ERROR_EXIT))
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


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


@app.command()
def run(
    model: Annotated[
        str, typer.Option(help="Hub id, local directory, .gguf file, or 'bundled' (SmolLM2-135M).")
    ] = "bundled",
    dataset: Annotated[
        str,
        typer.Option(
            help="aime24 | aime25 | math500 | gsm8k | amc23 | planted[:semantic|causal] | path "
            "to a .jsonl (id, problem, answer; optional reasoning, or prompt_ids + output_ids)."
        ),
    ] = "planted",
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="STEPPRUNE_DATA_DIR", help="Folder with local copies of the built-in datasets."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N problems.")] = None,
    samples: Annotated[int, typer.Option(help="Samples (traces) per problem.")] = 1,
    thresholds: Annotated[
        str, typer.Option(help="Pruning thresholds (percentiles as fractions), comma-separated.")
    ] = DEFAULT_THRESHOLDS_TEXT,
    max_new_tokens: Annotated[int, typer.Option(help="Token budget of each trace.")] = 32768,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 0.6,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of sampling and of the planted set.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    load_in_4bit: Annotated[
        bool, typer.Option(help="NF4 weights via bitsandbytes (CUDA only; extra 'gpu').")
    ] = False,
    scorer: Annotated[
        str | None,
        typer.Option(
            help="Step scorer spec: attention[:query=last|answer|probe,layers=..,heads=mean|max|"
            "receiver,agg=sum|mean,sink=keep|exclude,calibration=FILE] | ablation | "
            "entropy[:agg=sum|mean] | redundancy[:of=SPEC,lambda=L,layer=N,vector=hidden|key] | "
            "forced-answer | resampling[:k=K,seed=S,max_new_tokens=M] | mix:a=SPEC,b=SPEC,w=W "
            "(a SPEC with commas in parentheses) | random | length | position | uniform. "
            "Default: attention (online mode: attention:query=probe)."
        ),
    ] = None,
    policy: Annotated[
        str, typer.Option(help="Pruning policy: percentile | adaptive (TRAAC).")
    ] = "percentile",
    segmenter: Annotated[
        str,
        typer.Option(
            help="Step boundaries: paragraph (line ends if there is no blank line) | line | "
            "sentence | markers."
        ),
    ] = "paragraph",
    mode: Annotated[
        str,
        typer.Option(
            help="text (re-prompt with kept steps) | kv (answer from a pruned KV cache) | "
            "online (evict steps during generation, Think Clearly)."
        ),
    ] = "text",
    engine: Annotated[
        str,
        typer.Option(
            help="Engine for traces and text-mode answers: hf (transformers) | vllm (vLLM in "
            "its own process: `make vllm`, or the extra 'vllm' on a GPU)."
        ),
    ] = "hf",
    tensor_parallel_size: Annotated[
        int, typer.Option(help="vllm engine: GPUs per model (tensor parallelism).")
    ] = 1,
    gpu_memory_utilization: Annotated[
        float | None,
        typer.Option(
            help="vllm engine: share of GPU memory vLLM takes (default 0.5 on a GPU, beside "
            "the transformers model that scores)."
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Ray workers for the transformers stages (scoring, kv/online modes, hf "
            "traces), each with its own model on one device (extra 'ray')."
        ),
    ] = 1,
    ray_address: Annotated[
        str | None,
        typer.Option(help="A running Ray cluster to spread the work over (e.g. ray://host:10001)."),
    ] = None,
    positions: Annotated[
        str, typer.Option(help="kv mode: original positions (gaps) | rerotate kept keys.")
    ] = "original",
    interval: Annotated[
        int, typer.Option(help="online mode: check every N tokens (0 = at paragraph ends).")
    ] = 0,
    budget: Annotated[
        int | None,
        typer.Option(help="online mode: evict lowest-scoring steps to keep at most N entries."),
    ] = None,
    answer_max_tokens: Annotated[
        int, typer.Option(help="Token budget of each re-evaluated answer.")
    ] = 512,
    control: Annotated[
        bool,
        typer.Option(help="Also re-evaluate a random pruning that keeps as many steps."),
    ] = True,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default runs/<dataset>-<model>).")
    ] = None,
) -> None:
    """Generate traces, score and prune their steps, re-evaluate at each threshold, report.

    The results table goes to stdout; progress, warnings and the closing line to stderr."""
    console = Console(stderr=True)
    with user_errors():
        parsed_thresholds = _parse_thresholds(thresholds)
        from stepprune.config import RunConfig

        config = RunConfig(
            model=model,
            dataset=dataset,
            data_dir=str(data_dir) if data_dir else None,
            limit=limit,
            samples=samples,
            thresholds=parsed_thresholds,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            device=device,
            dtype=dtype,
            load_in_4bit=load_in_4bit,
            scorer=scorer,
            policy=policy,
            segmenter=segmenter,
            mode=mode,
            engine=engine,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            workers=workers,
            ray_address=ray_address,
            positions=positions,
            interval=interval,
            budget=budget,
            control=control,
            answer_max_tokens=answer_max_tokens,
            out=str(out) if out else None,
        )
        _check_model_options(device, dtype, load_in_4bit)
        from stepprune.experiment import run_experiment  # torch, transformers: after the checks

        summary, folder = run_experiment(config, console, Console())
    base = summary["thresholds"].get("0.0") or next(iter(summary["thresholds"].values()))
    truncation = summary.get("truncation_rate")
    console.print(
        f"done: {summary['num_problems']} problems x {summary['samples']} samples, "
        f"accuracy at {min(config.thresholds)}: {base['accuracy']:.1%}, "
        f"truncated traces: {truncation if truncation is None else f'{truncation:.0%}'}; "
        f"results in {folder}/",
        highlight=False,
        soft_wrap=True,
    )


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
    model: Annotated[str, typer.Option(help="Model (default: the bundled SmolLM2).")] = "bundled",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    repeats: Annotated[int, typer.Option(help="Timed repeats (median).")] = 5,
    eager_limit_gb: Annotated[
        float, typer.Option(help="Run eager only if its attention weights fit in this (GiB).")
    ] = 8.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
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
    model: Annotated[str, typer.Option(help="Model (default: the bundled SmolLM2).")] = "bundled",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
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
    model: Annotated[str, typer.Option(help="Model (default: the bundled SmolLM2).")] = "bundled",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
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
    seed: Annotated[int, typer.Option(help="Seed of the planted set and the bootstrap.")] = 0,
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
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
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
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
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
