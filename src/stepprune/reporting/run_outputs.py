"""What every `stepprune run` writes and prints at its end.

Run (the folder's contents) -> aggregate.build_summary() -> Summary -> summary.json
                                                                    -> tables: results.md,
                                                                       terminal
                            -> plots: importance.png (the trace with the most steps)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console

from stepprune.aggregate import Summary, build_summary
from stepprune.reporting.tables import print_summary_table, results_markdown
from stepprune.runfolder import (
    IMPORTANCE_PLOT,
    RESULTS_FILE,
    SUMMARY_FILE,
    Run,
    threshold_key,
    write_atomic,
)
from stepprune.schema import Trace

MAX_LISTED = 8  # truncated traces named in the warning; the rest are counted


def warn_truncated(traces: Sequence[Trace], max_new_tokens: Any, err: Console) -> None:
    """Name the traces that hit the token budget before finishing their reasoning."""
    truncated = [f"{t.problem_id}#{t.sample}" for t in traces if t.truncated]
    if not truncated:
        return
    budget = f"--max-new-tokens {max_new_tokens}" if max_new_tokens else "the token budget"
    err.print(
        f"[yellow]warning:[/yellow] {len(truncated)} trace(s) stopped at {budget} before "
        f"finishing their reasoning (truncated): {', '.join(truncated[:MAX_LISTED])}"
        f"{' ...' if len(truncated) > MAX_LISTED else ''}",
        highlight=False,
        soft_wrap=True,
    )


def write_run_outputs(
    run: Run,
    *,
    scorer: str,
    control: str | None,
    policy: str,
    mode: str,
    thresholds: Sequence[float],
    units: set[tuple[str, int]] | None,
    out: Console,
    err: Console,
) -> Summary:
    """Write summary.json, results.md and importance.png into run.path for the records of
    `scorer` (and its control, the spec `control`) at `thresholds` over `units` (problem_id,
    sample) (None = all); print the results table to `out` (stdout) and warnings (truncated
    traces) to `err`; return the summary (``summary.to_json()`` is summary.json's object).

    The summary's ``model`` is the run's model setting and ``dataset`` its short name (a
    built-in name, or a file's stem). Records of other scorers and thresholds in the folder
    (an earlier run with other settings) are left out.
    """
    # Imported here: problems pulls in the planted generator, needed only for the name.
    from stepprune.problems import dataset_name

    def selected(problem_id: str, sample: int) -> bool:
        return units is None or (problem_id, sample) in units

    keys = {threshold_key(t) for t in thresholds}
    traces = [t for t in run.traces if selected(t.problem_id, t.sample)]
    records = [
        r
        for r in run.records
        if selected(r.problem_id, r.sample)
        and threshold_key(r.threshold) in keys
        and r.scorer in (scorer, control)
    ]
    warn_truncated(traces, run.settings.get("max_new_tokens"), err)
    summary = build_summary(
        records,
        traces,
        model=run.model,
        dataset=dataset_name(run.dataset),
        scorer=scorer,
        control=control,
        policy=policy,
        mode=mode,
    )
    write_atomic(run.path / SUMMARY_FILE, summary.to_text())
    write_atomic(run.path / RESULTS_FILE, results_markdown(summary))
    # matplotlib loads here, at the end of a run, not with the package (about 1.4 s).
    from stepprune.reporting.plots import importance_figure, pick_trace_for_plot, save_figure

    trace = pick_trace_for_plot(traces)
    if trace is not None:
        save_figure(importance_figure(trace), run.path / IMPORTANCE_PLOT)
    print_summary_table(summary, out)
    return summary
