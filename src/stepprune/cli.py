"""Command-line interface: ``stepprune run ...``.

Every error in the user's input (an option, a file, a run folder) ends the command with one
line ``error: ...`` on stderr and exit code 2, never a traceback: usage errors of the parser
(``OneLineErrors``) and the errors the commands raise (``user_errors``) alike.

Heavy modules (torch, transformers) are imported inside the commands, so a usage error or a
bad run folder is reported at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperCommand

from stepprune.cli_bench import bench_app, check_at_least, check_model_options_early
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


def _parse_thresholds(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"--thresholds {text!r}: expected comma-separated numbers such as 0,0.25,0.5"
        ) from None


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    help="Attention-guided pruning of reasoning steps in chains of thought.",
)
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


@app.command()
def calibrate(
    run: Annotated[Path, typer.Option(help="A run folder whose traces calibrate the heads.")],
    out: Annotated[Path, typer.Option(help="The receiver-head file to write (JSON).")],
    top_k: Annotated[int, typer.Option(help="Number of receiver heads.")] = 8,
    scorer: Annotated[
        str, typer.Option(help="Attention spec whose queries/layers are measured.")
    ] = "attention",
    criterion: Annotated[
        str,
        typer.Option(
            help="entropy (lowest entropy over steps) | kurtosis (Thought Anchors: kurtosis "
            "of vertical scores; use --top-k 20 as the paper)."
        ),
    ] = "entropy",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Choose receiver heads on a run's traces, for attention:heads=receiver,calibration=FILE."""
    with user_errors():
        check_at_least("--top-k", top_k, 1)
        check_model_options_early(device, dtype)
        from stepprune.scorers.receiver import calibrate_run

        heads = calibrate_run(run, out, top_k, scorer, device, dtype, criterion)  # type: ignore[arg-type]
    Console(stderr=True).print(
        f"{len(heads)} receiver heads written to {out}; use --scorer "
        f"attention:heads=receiver,calibration={out}",
        highlight=False,
        soft_wrap=True,
    )
