"""`stepprune report`: tables with confidence intervals, JSON and plots over run folders.

    run folders -> load_run() -> aggregate.build_report() -> report.json
                                                           -> tables: report.md, terminal
                                                           -> plots: accuracy_vs_kept.png,
                                                              tokens_saved.png, importance/

One row per (scorer, mode, threshold) of each run (see ``aggregate.Row``): pass@1 with a 95%
bootstrap interval over problems, the paired difference against threshold 0.0, kept and saved
tokens, and beside every scorer the random control at the same threshold with the paired
difference scorer - random: the question is whether the scorer beats random.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from stepprune.aggregate import Bootstrap, build_report
from stepprune.reporting import file_in_the_way
from stepprune.reporting.plots import (
    accuracy_figure,
    importance_figure,
    save_figure,
    tokens_saved_figure,
)
from stepprune.reporting.tables import print_report, report_markdown
from stepprune.runfolder import Run, load_run
from stepprune.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
ACCURACY_PNG = "accuracy_vs_kept.png"
TOKENS_PNG = "tokens_saved.png"
IMPORTANCE_DIR = "importance"
DEFAULT_MAX_IMPORTANCE_PLOTS = 10


class ReportError(ValueError):
    """The report folder cannot be written (one-line message naming it)."""


SLUG_MAX = 100  # well below the 255 bytes of a file name, with room for "_s<sample>.png"


def slug(text: str) -> str:
    """A file-name-safe form of a label or problem id.

    Letters and digits of any script are kept, runs of other characters become ``_``; an id
    with nothing left, or longer than ``SLUG_MAX`` bytes, gets a hash of itself instead of
    the lost part, so that ids of emoji only, or long ids sharing their first characters,
    keep files of their own.
    """
    safe = re.sub(r"[^\w.-]+", "_", text).strip("_")
    if safe and len(safe.encode("utf-8")) <= SLUG_MAX:
        return safe
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    head = safe.encode("utf-8")[:SLUG_MAX].decode("utf-8", "ignore")
    return f"{head}_{digest}" if head else digest


def plot_importances(run: Run, label: str, folder: Path, limit: int) -> list[Path]:
    """Write step-importance bars of the first ``limit`` traces of sample 0 (then of other
    samples) to ``folder/<problem>_s<sample>.png``; returns the paths."""
    traces = sorted(run.traces, key=lambda t: t.sample != 0)[:limit]
    paths = []
    for trace in traces:
        title = f"{trace.problem_id} (sample {trace.sample}): {label}"
        path = folder / f"{slug(trace.problem_id)}_s{trace.sample}.png"
        # The importances of the run's scorer, not those the trace was first scored with.
        scored = run.scored_trace(trace, run.scorer)
        paths.append(save_figure(importance_figure(scored, title), path))
    return paths


def default_report_dir(run_dirs: Sequence[Path]) -> Path:
    """Where ``stepprune report`` writes without ``--out``: ``RUN_DIR/report`` for one run, the
    first run's parent ``/report`` for several (``runs/a runs/b`` -> ``runs/report``)."""
    first = Path(run_dirs[0])
    return first / "report" if len(run_dirs) == 1 else first.parent / "report"


def write_report(
    run_dirs: Sequence[Path],
    out_dir: Path,
    console: Console | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    max_importance_plots: int = DEFAULT_MAX_IMPORTANCE_PLOTS,
    err: Console | None = None,
) -> dict[str, Any]:
    """Read run folders and write ``report.md``, ``report.json`` and the plots to ``out_dir``.

    Args:
        run_dirs: One or more run folders written by ``stepprune run``; several are compared
            side by side (one table, one line per run and scorer in the plots).
        out_dir: Created if needed; files in it are overwritten.
        console: Where to print the tables (stdout in ``stepprune report``); None prints
            nothing.
        n_resamples, seed, level: Bootstrap settings of every interval.
        max_importance_plots: Step-importance plots per run (``importance/<run>/...png``).
        err: Where to print the closing list of files written (stderr in ``stepprune
            report``); default ``console``.

    Returns:
        The report dict (the contents of ``report.json``) with ``files``: the paths written.

    Raises:
        RunFolderError: a folder is not a run folder (the message names the missing file).
        ReportError: ``out_dir`` is a file, or cannot be created or written.
        ValueError: no run folders given.
    """
    if not run_dirs:
        raise ValueError("give at least one run folder")
    runs = [load_run(Path(d)) for d in run_dirs]
    report = build_report(runs, Bootstrap(n_resamples, seed, level))
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"report folder {out_dir}: exists and is not a folder")
    blocking = file_in_the_way(out_dir)
    if blocking is not None:
        raise ReportError(f"report folder {out_dir}: {blocking} is a file, not a folder")
    try:
        _write_files(report, runs, out_dir, max_importance_plots)
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        raise ReportError(
            f"report folder {out_dir}: cannot write there ({where}{error.strerror or error})"
        ) from None
    if console is not None:
        print_report(report, console)
    closing = err or console
    if closing is not None:
        closing.print(
            f"report written to {out_dir}/: {', '.join(Path(f).name for f in report['files'])}",
            highlight=False,
            soft_wrap=True,
        )
    return report


def _write_files(
    report: dict[str, Any], runs: Sequence[Run], out_dir: Path, max_importance_plots: int
) -> None:
    """Write report.md, report.json and the plots; ``report["files"]`` lists them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [
        save_figure(accuracy_figure(report), out_dir / ACCURACY_PNG),
        save_figure(tokens_saved_figure(report), out_dir / TOKENS_PNG),
    ]
    for run, entry in zip(runs, report["runs"], strict=True):
        folder = out_dir / IMPORTANCE_DIR / slug(entry["label"])
        folder.mkdir(parents=True, exist_ok=True)
        entry["importance_plots"] = [
            str(p.relative_to(out_dir))
            for p in plot_importances(run, entry["label"], folder, max_importance_plots)
        ]
    (out_dir / REPORT_MD).write_text(
        report_markdown(report, plots=[ACCURACY_PNG, TOKENS_PNG]), encoding="utf-8"
    )
    files += [out_dir / REPORT_MD, out_dir / REPORT_JSON]
    report["files"] = [str(f) for f in files]
    (out_dir / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
