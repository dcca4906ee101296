"""One aggregation of a run's records: the numbers behind every table, JSON file and plot.

    Records -> aggregate_rows() -> Row per (scorer, mode, threshold)
    Traces (+ Records) -> run_figures() -> RunFigures (counts, truncation, original accuracy)
    Rows + RunFigures -> build_summary() -> Summary (summary.json, rendered as results.md)
                      -> build_report()  (report.json, rendered as report.md and plots)

Pure computation: no files, no rendering (``stepprune.reporting`` renders). Thresholds are
grouped on ``runfolder.threshold_key``, so ``0.1 * 3`` and ``0.3`` are one row; a random
control is a record with ``Record.control_of`` (never a user's own ``random`` scorer), and each
scorer is compared only with its own control, the records whose ``control_of`` names it
(controls of folders written before the field are adapted as the run folder's reader does,
``runfolder.adapt_controls``). Intervals are percentile bootstraps over problems
(``stepprune.stats``).

Means of nothing are None, never 0: a run without traces has no truncation rate, not a rate of
0%. Rows are built from non-empty groups of records, so their means are always numbers.
"""

from stepprune.aggregate.rows import Bootstrap, Interval, Row, aggregate_rows, kept_fraction, mean
from stepprune.aggregate.runs import RunFigures, build_report, run_figures, run_labels
from stepprune.aggregate.summary import Summary, SummaryRow, build_summary, summary_json

__all__ = [
    "Bootstrap",
    "Interval",
    "Row",
    "RunFigures",
    "Summary",
    "SummaryRow",
    "aggregate_rows",
    "build_report",
    "build_summary",
    "kept_fraction",
    "mean",
    "run_figures",
    "run_labels",
    "summary_json",
]
