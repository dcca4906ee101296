"""Command-line interface: ``stepprune run ...``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from stepprune.config import DEFAULT_THRESHOLDS, RunConfig
from stepprune.experiment import run_experiment
from stepprune.models import ModelLoadError, load_model
from stepprune.problems import DatasetError
from stepprune.registry import SpecError
from stepprune.runfolder import RunFolderError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Attention-guided pruning of reasoning steps in chains of thought.",
)

# Errors that are the user's input, reported as one line with a non-zero exit, no traceback.
USER_ERRORS = (DatasetError, ModelLoadError, RunFolderError, SpecError, ValueError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn an error in the user's input into one line on stderr and exit code 2."""
    try:
        yield
    except USER_ERRORS as error:
        # Plain echo: a rich console would wrap the message over several lines.
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


def _parse_thresholds(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected comma-separated numbers") from None


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
            help="aime24 | aime25 | math500 | gsm8k | amc23 | planted | path to a .jsonl "
            "(id, problem, answer; optional reasoning)."
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
    ] = ",".join(str(t) for t in DEFAULT_THRESHOLDS),
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
            "receiver,agg=sum|mean,sink=keep|exclude] | ablation | random | length | position"
            " | uniform. Default: attention (online mode: attention:query=probe)."
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
        str, typer.Option(help="Engine for traces and text-mode answers: hf (transformers).")
    ] = "hf",
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
        config = RunConfig(
            model=model,
            dataset=dataset,
            data_dir=str(data_dir) if data_dir else None,
            limit=limit,
            samples=samples,
            thresholds=_parse_thresholds(thresholds),
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
            positions=positions,
            interval=interval,
            budget=budget,
            control=control,
            answer_max_tokens=answer_max_tokens,
            out=str(out) if out else None,
        )
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


def _print_json_or_table(data: object, as_json: bool, console: Console) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        console.print_json(json.dumps(data))


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
    from stepprune.bench.scoring import run_scoring_bench

    console = Console(stderr=True)
    with user_errors():
        loaded, tokenizer = load_model(model, device, dtype)
        result = run_scoring_bench(loaded, tokenizer, tokens, repeats, eager_limit_gb)
    _print_json_or_table(result.to_json(), as_json, console)


@bench_app.command("kv")
def bench_kv(
    tokens: Annotated[int, typer.Option(help="Trace length N.")] = 4096,
    model: Annotated[str, typer.Option(help="Model (default: the bundled SmolLM2).")] = "bundled",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """kv vs text re-evaluation time, online peak cache at a 50% budget, decode speed, exactness."""
    from stepprune.bench.kv import run_kv_bench

    console = Console(stderr=True)
    with user_errors():
        loaded, tokenizer = load_model(model, device, dtype)
        result = run_kv_bench(loaded, tokenizer, tokens)
    _print_json_or_table(result.to_json(), as_json, console)


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run folders.")],
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default RUN_DIR/report).")
    ] = None,
) -> None:
    """Tables (Markdown, terminal, JSON) and plots for one run or several side by side."""
    from stepprune.reporting.report import default_report_dir, write_report

    console = Console(stderr=True)
    with user_errors():
        folder = out or default_report_dir(run_dirs)
        write_report(run_dirs, folder, console)


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
    model: Annotated[str, typer.Option(help="Model (default: the bundled SmolLM2).")] = "bundled",
    scorers: Annotated[
        str | None,
        typer.Option(help="Scorer specs separated by ';' (default: every built-in variant)."),
    ] = None,
    problems: Annotated[int, typer.Option(help="Planted problems.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the planted set and the bootstrap.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Planted-step ground truth: AUROC (95% CI), answer recovery and lift of every scorer."""
    from stepprune.bench.scorers import results_table_markdown, run_scorer_benchmark

    console = Console(stderr=True)
    specs = [s.strip() for s in scorers.split(";") if s.strip()] if scorers else None
    with user_errors():
        loaded, tokenizer = load_model(model, device, dtype)
        results = run_scorer_benchmark(
            loaded, tokenizer, specs, n_problems=problems, seed=seed, console=console
        )
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in results], indent=2))
    else:
        typer.echo(results_table_markdown(results))
