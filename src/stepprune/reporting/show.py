"""`stepprune show`: one trace in the terminal (and as an HTML page), steps shaded by
importance, pruned steps struck through.

    run folder -> show_problem() -> render_terminal() (rich)
                                 -> html_page.render_html() (one self-contained HTML page)

The problem statement is the trace's own (``Trace.problem``); only folders written before
traces carried it fall back to looking the problem up in the run's dataset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.style import Style
from rich.table import Table
from rich.text import Text

from stepprune.reporting import file_in_the_way
from stepprune.reporting.html_page import (
    default_view,
    importance_levels,
    order_records,
    render_html,
    shade,
)
from stepprune.reporting.labels import record_label
from stepprune.runfolder import (  # RUN_FILES: never overwritten by an HTML page
    CONFIG_FILE,
    RUN_FILES,
    Run,
    load_run,
    threshold_key,
)
from stepprune.schema import Record, Trace


class ShowError(ValueError):
    """The requested problem, sample or threshold is not in the run (one-line message)."""


# -- terminal --------------------------------------------------------------------------------


def render_terminal(trace: Trace, kept_steps: set[int] | None, console: Console) -> None:
    """Print the reasoning, one step per paragraph, shaded by importance.

    Steps not in ``kept_steps`` are struck through and marked ``-`` (kept ones ``+``), so the cut
    is visible on terminals without colour or strike-through too. ``kept_steps=None`` shows the
    shading alone, with nothing marked pruned.
    """
    levels = importance_levels(trace)
    if not trace.steps:
        console.print("(this trace has no reasoning steps)")
    for step, level in zip(trace.steps, levels, strict=True):
        pruned = kept_steps is not None and step.index not in kept_steps
        marker = " " if kept_steps is None else ("-" if pruned else "+")
        score = "  n/a" if step.importance is None else f"{step.importance:.3f}"
        label = f" {step.label}" if step.label else ""
        line = Text(f"{marker} [{step.index:>3}] {score}{label} ", style="dim" if pruned else "")
        r, g, b = shade(level)
        # Black text on the light shade: readable whatever the terminal's own colours are.
        style = Style(color="black", bgcolor=f"rgb({r},{g},{b})", strike=pruned)
        line.append(step.text, style=style)
        console.print(line, soft_wrap=False)
        console.print()


# Characters the answers table needs besides its scorer column (six columns, rules, padding).
OTHER_COLUMNS = 69


def _answers_table(
    trace: Trace, records: Sequence[Record], selected: Record | None, width: int
) -> Table:
    """The answers of ``trace``, one line each in a console ``width`` wide: the scorer's label
    gets the room the other columns leave (a label folded over lines made three per answer)."""
    limit = max(width - OTHER_COLUMNS, 11)
    table = Table(title=f"Answers of {trace.problem_id} (sample {trace.sample})")
    for name in ("Scorer", "Threshold", "Steps kept", "Tokens kept", "Prediction", "Gold", "OK"):
        table.add_column(
            name,
            justify="left" if name in ("Scorer", "Prediction") else "right",
            no_wrap=name == "Scorer",
        )
    for record in records:
        table.add_row(
            record_label(record, limit),
            threshold_key(record.threshold),
            f"{record.num_kept_steps}/{record.num_steps}",
            f"{record.tokens_kept}/{record.reasoning_tokens}",
            str(record.prediction),
            record.gold,
            "yes" if record.correct else "no",
            style="bold" if record is selected else None,
        )
    return table


# -- one problem of a run ------------------------------------------------------------------------


def problem_text(run: Run, trace: Trace) -> str | None:
    """The statement of ``trace``'s problem: ``trace.problem``, stored with the trace.

    Folders written before traces carried it fall back to :func:`lookup_problem_text`.
    """
    return trace.problem or lookup_problem_text(run, trace)


def lookup_problem_text(run: Run, trace: Trace) -> str | None:
    """The statement of ``trace``'s problem looked up in the run's dataset, when it can be read
    locally (never the network): for folders whose traces lack ``problem``.

    The planted set is regenerated, a JSONL path or a built-in set's local copy (``data_dir``
    or ``$STEPPRUNE_DATA_DIR``) is read. The dataset may have changed since the run (a new
    planted generator, an edited file), and a wrong statement is worse than none, so the
    problem found must agree with the run: same gold answer as the trace's records and, for a
    teacher-forced problem, the trace's first step inside its reasoning. Anything else gives
    None: the statement is a convenience and must never stop the view.
    """
    # Imported here: problems pulls in the planted generator, needed only for this lookup.
    from stepprune.problems import BUILTIN_DATASETS, DATA_DIR_ENV, load_jsonl, load_problems

    settings = run.settings
    dataset = str(settings.get("dataset", ""))
    try:
        if dataset in BUILTIN_DATASETS:
            data_dir = settings.get("data_dir") or os.environ.get(DATA_DIR_ENV)
            local = Path(data_dir) / BUILTIN_DATASETS[dataset].filename if data_dir else None
            if local is None or not local.is_file():
                return None  # would need the hub
            problems = load_jsonl(local)
        else:
            problems = load_problems(dataset, None, settings.get("limit"), settings.get("seed", 0))
    except Exception:  # any loader failure only means "statement unknown"
        return None
    problem = next((p for p in problems if p.id == trace.problem_id), None)
    if problem is None:
        return None
    golds = {r.gold for r in run.records if r.problem_id == trace.problem_id}
    if golds and problem.answer not in golds:
        return None
    mismatch = (
        problem.reasoning is not None
        and bool(trace.steps)
        and trace.steps[0].text.strip() not in problem.reasoning
    )
    return None if mismatch else problem.problem


def _examples(values: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def find_trace(run: Run, problem_id: str, sample: int = 0) -> Trace:
    """The trace of ``problem_id`` / ``sample``.

    Raises:
        ShowError: unknown problem (a few valid ids are listed) or sample.
    """
    trace = run.trace(problem_id, sample)
    if trace is not None:
        return trace
    ids = list(dict.fromkeys(t.problem_id for t in run.traces))
    if problem_id not in ids:
        hint = f"valid ids: {_examples(ids)}" if ids else "the run has no traces yet"
        raise ShowError(f"problem {problem_id!r} is not in {run.path}; {hint}")
    samples = sorted(t.sample for t in run.traces if t.problem_id == problem_id)
    raise ShowError(
        f"problem {problem_id!r} has no sample {sample} in {run.path}; "
        f"samples: {_examples(samples)}"
    )


def show_problem(
    run_dir: Path | str,
    problem_id: str,
    sample: int = 0,
    threshold: float | None = None,
    html_path: Path | str | None = None,
    console: Console | None = None,
) -> Path | None:
    """Print one trace to the terminal and, with ``html_path``, write its HTML page.

    Args:
        run_dir: A run folder written by ``stepprune run``.
        problem_id: The problem to show.
        sample: Which sample of the problem.
        threshold: The pruning threshold whose pruned steps are struck through (and the view
            the HTML page opens on); default: the largest threshold the trace was evaluated at.
        html_path: Where to write the page (parent folders are created); None writes none.
        console: Where to print; default stdout.

    Returns:
        The HTML path written, or None.

    Raises:
        RunFolderError: ``run_dir`` is not a run folder.
        ShowError: unknown problem id, sample, or threshold (the message lists valid ones).
    """
    console = console or Console()
    run = load_run(run_dir)
    trace = find_trace(run, problem_id, sample)
    records = order_records(trace, run.records)
    own = [r for r in records if r.scorer == records[0].scorer] if records else []
    if threshold is not None:
        key = threshold_key(threshold)
        if not any(threshold_key(r.threshold) == key for r in own):
            known = sorted({r.threshold for r in own})
            raise ShowError(
                f"{problem_id} sample {sample} has no answer at threshold {key}; "
                f"thresholds: {_examples([threshold_key(t) for t in known]) or 'none yet'}"
            )
    view = default_view(records, threshold)
    selected = records[view] if view >= 0 else None

    text = problem_text(run, trace)
    # The page is written first: a path that cannot be written fails before anything is shown.
    path = None if html_path is None else Path(html_path)
    if path is not None:
        write_html(path, render_html(trace, records, text, threshold=threshold))
    console.print(f"[bold]{problem_id}[/bold] (sample {sample}) from {run.path}", highlight=False)
    if text:
        console.print(Text(text), style="italic")
    if selected is not None:
        console.print(
            f"{record_label(selected)}, threshold {threshold_key(selected.threshold)}: "
            f"kept {selected.num_kept_steps} of {selected.num_steps} steps ('+' kept, '-' pruned); "
            "shading = importance / the trace's largest",
            highlight=False,
        )
    console.print()
    # The shading of the scorer shown (a control's: the scorer it controls).
    shown = run.scored_trace(trace, selected.control_of or selected.scorer) if selected else trace
    render_terminal(shown, set(selected.kept_steps) if selected else None, console)
    if records:
        console.print(_answers_table(trace, records, selected, console.width))
    verdict = {None: "not graded", True: "correct", False: "wrong"}[trace.original_correct]
    console.print(
        f"original answer (before pruning): {trace.original_prediction!s} ({verdict})",
        highlight=False,
    )
    if path is not None:
        console.print(f"HTML written to {path}", highlight=False)
    return path


def write_html(path: Path, page: str) -> None:
    """Write ``page`` to ``path`` (parent folders are created).

    Raises:
        ShowError: ``path`` is a folder, a file of a run folder (the page would destroy it),
            or cannot be written; the message names it.
    """
    if path.is_dir():
        raise ShowError(f"--html {path}: is a folder; give a file name such as {path}/page.html")
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise ShowError(f"--html {path}: {blocking} is a file, not a folder")
    if path.name in RUN_FILES and (path.parent / CONFIG_FILE).is_file():
        raise ShowError(
            f"--html {path}: is a file of the run folder {path.parent}; not overwritten"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise ShowError(f"--html {path}: cannot write there ({error.strerror or error})") from None
